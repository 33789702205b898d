/**
 * Model output (untrusted) to sanitized DOM: marked (GFM) turns Markdown into HTML, DOMPurify keeps an
 * allow-list of tags and attributes, and the page's own post-pass makes links open in a new tab,
 * remote images into click-to-load placeholders, and code blocks into blocks with a Copy button.
 *
 * Raw HTML in the Markdown is shown as text, never parsed: the model's `<img onerror>` is something it
 * wrote, not something the page runs. DOMPurify then stands behind that as the sanitizer: no script,
 * event handler, form, `style` or `class` survives, and a link keeps only an http(s) or mailto target.
 */
import DOMPurify from "dompurify";
import { type Links, Marked, type Token } from "marked";
import { MATH_EXTENSIONS } from "./math.ts";

const escapeHtml = (text: string): string =>
  text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** A fence's language, kept to a safe word (it becomes an attribute the highlighter reads). */
export function fenceLanguage(lang: string | undefined): string {
  const word = (lang ?? "").trim().split(/\s+/)[0] ?? "";
  return /^[A-Za-z0-9_+#.-]{1,24}$/.test(word) ? word.toLowerCase() : "";
}

const marked = new Marked({
  gfm: true,
  breaks: false,
  extensions: MATH_EXTENSIONS,
  renderer: {
    html: ({ text }) => escapeHtml(text),
    code: ({ text, lang }) => {
      const language = fenceLanguage(lang);
      const attr = language === "" ? "" : ` data-lang="${language}"`;
      return `<pre><code${attr}>${escapeHtml(text.replace(/\n$/, ""))}</code></pre>\n`;
    },
  },
});

const ALLOWED_TAGS = [
  "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
  "blockquote", "ul", "ol", "li", "a", "img", "table", "thead", "tbody", "tr", "th", "td", "input",
  "sup", "sub", "div", "span",
];
const ALLOWED_ATTR = ["href", "title", "alt", "src", "start", "align", "type", "checked", "disabled", "data-lang", "data-math"];
const LINK_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

/** An absolute http(s) or mailto URL, or null: no `javascript:`, `data:`, relative or odd target. */
export function safeLinkUrl(href: string | null, protocols: ReadonlySet<string> = LINK_PROTOCOLS): URL | null {
  if (href === null) return null;
  try {
    const url = new URL(href.trim());
    return protocols.has(url.protocol) ? url : null;
  } catch {
    return null;
  }
}

export const IMAGE_PROTOCOLS: ReadonlySet<string> = new Set(["http:", "https:"]);

let hooked = false;

function installHooks(): void {
  if (hooked) return;
  hooked = true;
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      const url = safeLinkUrl(node.getAttribute("href"));
      if (url === null) node.removeAttribute("href");
      else {
        node.setAttribute("href", url.href);
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    } else if (node.tagName === "INPUT") {
      if (node.getAttribute("type") !== "checkbox") node.remove();
      else node.setAttribute("disabled", "");
    }
  });
}

/** Sanitized HTML as a fragment of `doc`, with the page's post-pass applied. */
export function sanitize(html: string, doc: Document = document): DocumentFragment {
  installHooks();
  const clean = DOMPurify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ADD_ATTR: ["target", "rel"],
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  });
  // The post-pass runs in DOMPurify's inert document: an <img> imported into the page's document
  // starts loading at once, even before it is attached, so the images go before the import.
  const inert = clean.ownerDocument ?? doc;
  placeholdImages(clean, inert);
  wrapCodeBlocks(clean, inert);
  return doc.importNode(clean, true);
}

/** A remote image is never loaded by itself: a button naming its host loads it on click. */
function placeholdImages(root: DocumentFragment, doc: Document): void {
  for (const img of Array.from(root.querySelectorAll("img"))) {
    const url = safeLinkUrl(img.getAttribute("src"), IMAGE_PROTOCOLS);
    const alt = img.getAttribute("alt") ?? "";
    if (url === null) {
      img.replaceWith(doc.createTextNode(alt === "" ? "[image]" : `[image: ${alt}]`));
      continue;
    }
    const button = doc.createElement("button");
    button.type = "button";
    button.className = "remote-image";
    button.dataset.action = "load-image";
    button.dataset.src = url.href;
    if (alt !== "") button.dataset.alt = alt;
    button.textContent = `Image${alt === "" ? "" : ` “${alt}”`} from ${url.host}: load`;
    button.title = `Loads ${url.href}`;
    img.replaceWith(button);
  }
}

function wrapCodeBlocks(root: DocumentFragment, doc: Document): void {
  for (const pre of Array.from(root.querySelectorAll("pre"))) {
    const code = pre.querySelector("code");
    const block = doc.createElement("div");
    block.className = "codeblock";
    const head = doc.createElement("div");
    head.className = "codehead";
    const lang = doc.createElement("span");
    lang.textContent = code?.dataset.lang ?? "";
    const copy = doc.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.dataset.action = "copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy the code");
    head.append(lang, copy);
    pre.replaceWith(block);
    block.append(head, pre);
  }
}

/** The top-level blocks of a Markdown text (each with its `raw` source), and its link definitions. */
export function lexBlocks(source: string): { tokens: Token[]; links: Links } {
  const tokens = marked.lexer(source);
  return { tokens: [...tokens], links: tokens.links };
}

/** One block's HTML (not yet sanitized). */
export function blockHtml(token: Token, links: Links): string {
  const list = Object.assign([token], { links });
  return marked.parser(list);
}

/** A whole Markdown text to sanitized DOM. */
export function renderMarkdown(source: string, doc: Document = document): DocumentFragment {
  return sanitize(marked.parse(source, { async: false }), doc);
}
