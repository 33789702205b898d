/**
 * Math in replies: `$…$`, `\(…\)` inline and `$$…$$`, `\[…\]` as blocks. marked's extensions find
 * them and leave a placeholder holding the TeX as text; KaTeX, loaded the first time a reply has math,
 * typesets it as MathML (no inline styles, so the page's CSP needs none) with `trust: false` and a
 * `maxExpand` bound, and its output goes through DOMPurify's MathML profile before it is shown.
 */
import DOMPurify from "dompurify";
import type { TokenizerAndRendererExtension, Tokens } from "marked";

const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** `$$…$$` or `\[…\]` on their own lines. */
const BLOCK = /^(?:\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\])[ \t]*(?:\n|$)/;
/** `$…$` (no space inside either end, not followed by a digit: "$5 and $10" is money) or `\(…\)`. */
const INLINE = /^(?:\$(?![\s$])((?:\\.|[^\\$\n])+?)(?<!\s)\$(?!\d)|\\\(((?:\\.|[^\n])+?)\\\))/;

function mathToken(type: "math_block" | "math_inline", match: RegExpExecArray): Tokens.Generic {
  return { type, raw: match[0], text: (match[1] ?? match[2] ?? "").trim() };
}

export const MATH_EXTENSIONS: TokenizerAndRendererExtension[] = [
  {
    name: "math_block",
    level: "block",
    start: (src) => src.search(/\$\$|\\\[/),
    tokenizer(src) {
      const match = BLOCK.exec(src);
      return match === null ? undefined : mathToken("math_block", match);
    },
    renderer: (token) => `<div data-math="block">${escapeHtml(String(token.text))}</div>\n`,
  },
  {
    name: "math_inline",
    level: "inline",
    start: (src) => src.search(/\$|\\\(/),
    tokenizer(src) {
      const match = INLINE.exec(src);
      return match === null ? undefined : mathToken("math_inline", match);
    },
    renderer: (token) => `<span data-math="inline">${escapeHtml(String(token.text))}</span>`,
  },
];

interface Katex {
  renderToString(tex: string, options: Record<string, unknown>): string;
}

let katex: Promise<Katex> | null = null;
let ready: Katex | null = null;
const typeset = new WeakSet<Element>();

/** KaTeX's options: never trusted commands (`\href`, `\url`, …), a bounded macro expansion. */
export const KATEX_OPTIONS = { output: "mathml", throwOnError: false, trust: false, maxExpand: 200, maxSize: 20, strict: "ignore" };

function paint(node: HTMLElement, engine: Katex): void {
  if (typeset.has(node)) return;
  const html = engine.renderToString(node.textContent ?? "", { ...KATEX_OPTIONS, displayMode: node.dataset.math === "block" });
  node.innerHTML = DOMPurify.sanitize(html, { USE_PROFILES: { mathMl: true } });
  typeset.add(node);
}

/** Typeset the math under `root`: now if KaTeX is loaded, after its load otherwise. */
export function typesetIn(root: ParentNode): void {
  const nodes = Array.from(root.querySelectorAll<HTMLElement>("[data-math]"));
  if (nodes.length === 0) return;
  if (ready !== null) {
    for (const node of nodes) paint(node, ready);
    return;
  }
  katex ??= import("katex").then((module) => (ready = module.default as Katex));
  void katex.then((engine) => nodes.forEach((node) => node.isConnected && paint(node, engine))).catch(() => undefined);
}
