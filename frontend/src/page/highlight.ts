/**
 * Code highlighting, loaded when a code block first needs it: highlight.js's core and each language
 * are separate chunks (dynamic imports), so the page's first load carries none of them.
 *
 * highlight.js escapes the code and adds only its own `hljs-*` spans, so its HTML is trusted where the
 * model's is not.
 */
type Loader = () => Promise<{ default: unknown }>;

/** The languages offered, by every name a fence may use; each loads on first use. */
const LANGUAGES: Record<string, Loader> = {
  javascript: () => import("highlight.js/lib/languages/javascript"),
  typescript: () => import("highlight.js/lib/languages/typescript"),
  python: () => import("highlight.js/lib/languages/python"),
  bash: () => import("highlight.js/lib/languages/bash"),
  json: () => import("highlight.js/lib/languages/json"),
  xml: () => import("highlight.js/lib/languages/xml"),
  css: () => import("highlight.js/lib/languages/css"),
  c: () => import("highlight.js/lib/languages/c"),
  cpp: () => import("highlight.js/lib/languages/cpp"),
  rust: () => import("highlight.js/lib/languages/rust"),
  go: () => import("highlight.js/lib/languages/go"),
  java: () => import("highlight.js/lib/languages/java"),
  sql: () => import("highlight.js/lib/languages/sql"),
  yaml: () => import("highlight.js/lib/languages/yaml"),
  diff: () => import("highlight.js/lib/languages/diff"),
};

const ALIASES: Record<string, string> = {
  js: "javascript", jsx: "javascript", mjs: "javascript", ts: "typescript", tsx: "typescript",
  py: "python", sh: "bash", shell: "bash", zsh: "bash", console: "bash", html: "xml", svg: "xml",
  "c++": "cpp", cc: "cpp", h: "c", rs: "rust", golang: "go", yml: "yaml", patch: "diff",
};

/** The highlight.js language a fence's word names, or null when none is offered. */
export function languageFor(word: string | undefined): string | null {
  if (word === undefined || word === "") return null;
  const name = ALIASES[word] ?? word;
  return Object.hasOwn(LANGUAGES, name) ? name : null;
}

interface Highlighter {
  highlight(code: string, options: { language: string; ignoreIllegals: boolean }): { value: string };
  registerLanguage(name: string, language: unknown): void;
}

let core: Promise<Highlighter> | null = null;
const loaded = new Map<string, Promise<void>>();
const ready = new Set<string>();
let hljs: Highlighter | null = null;
const painted = new WeakSet<HTMLElement>();

function load(language: string): Promise<void> {
  let pending = loaded.get(language);
  if (pending === undefined) {
    core ??= import("highlight.js/lib/core").then((module) => (hljs = module.default as Highlighter));
    const loader = LANGUAGES[language];
    pending = Promise.all([core, loader?.()]).then(([engine, definition]) => {
      if (definition !== undefined) engine.registerLanguage(language, definition.default);
      ready.add(language);
    });
    loaded.set(language, pending);
  }
  return pending;
}

function paint(code: HTMLElement, language: string): void {
  if (hljs === null || painted.has(code)) return;
  code.innerHTML = hljs.highlight(code.textContent ?? "", { language, ignoreIllegals: true }).value;
  painted.add(code);
}

/** Highlight the code blocks under `root`: now where the language is loaded, after its load otherwise. */
export function highlightIn(root: ParentNode): void {
  for (const code of Array.from(root.querySelectorAll<HTMLElement>("pre > code[data-lang]"))) {
    const language = languageFor(code.dataset.lang);
    if (language === null) continue;
    if (ready.has(language)) paint(code, language);
    else void load(language).then(() => code.isConnected && paint(code, language)).catch(() => undefined);
  }
}
