/**
 * A reply's Markdown, rendered as it streams without re-rendering the whole reply on every token:
 * text is appended at once, rendering waits for the next animation frame (many tokens, one render),
 * and a render re-lexes the text (cheap) but rebuilds only the blocks whose source changed: while a
 * reply streams, that is the last block alone.
 */
import type { Token } from "marked";
import { highlightIn } from "./highlight.ts";
import { blockHtml, lexBlocks, sanitize } from "./markdown.ts";
import { typesetIn } from "./math.ts";

interface Block {
  raw: string;
  nodes: Node[];
}

/** How many leading blocks of `next` are unchanged from `current` (same source, in order). */
export function keptBlocks(current: readonly { raw: string }[], next: readonly { raw: string }[]): number {
  let index = 0;
  while (index < current.length && index < next.length && current[index]?.raw === next[index]?.raw) index += 1;
  // A block whose source grew (the streaming one) differs from its old source, so it is rebuilt.
  return index;
}

export type Schedule = (callback: () => void) => void;

export const nextFrame: Schedule = (callback) => {
  if (typeof requestAnimationFrame === "function") requestAnimationFrame(() => callback());
  else setTimeout(callback, 16);
};

export class MarkdownView {
  readonly root: HTMLDivElement;
  private source = "";
  private blocks: Block[] = [];
  private pending = false;
  /** How many blocks the last render rebuilt (for tests and the benchmark). */
  lastRebuilt = 0;

  constructor(
    private readonly onRender: () => void = () => undefined,
    private readonly schedule: Schedule = nextFrame,
  ) {
    this.root = document.createElement("div");
    this.root.className = "text markdown";
  }

  get text(): string {
    return this.source;
  }

  append(text: string): void {
    this.source += text;
    if (this.pending) return;
    this.pending = true;
    this.schedule(() => {
      if (this.pending) this.render();
    });
  }

  /** Replace the whole text and render now. */
  set(text: string): void {
    this.source = text;
    this.render(true);
  }

  /** Render what has arrived now (at the reply's end), rebuilding every block if `all`. */
  render(all = false): void {
    this.pending = false;
    const { tokens, links } = lexBlocks(this.source);
    const hasLinks = Object.keys(links).length > 0;
    const keep = all || hasLinks ? 0 : keptBlocks(this.blocks, tokens);
    for (const block of this.blocks.slice(keep)) for (const node of block.nodes) node.parentNode?.removeChild(node);
    const fresh = tokens.slice(keep).map((token) => this.build(token, links));
    this.blocks = [...this.blocks.slice(0, keep), ...fresh];
    this.lastRebuilt = fresh.length;
    for (const block of fresh) this.root.append(...block.nodes);
    highlightIn(this.root);
    typesetIn(this.root);
    this.onRender();
  }

  private build(token: Token, links: Parameters<typeof blockHtml>[1]): Block {
    if (token.type === "space") return { raw: token.raw, nodes: [] };
    const fragment = sanitize(blockHtml(token, links));
    return { raw: token.raw, nodes: Array.from(fragment.childNodes) };
  }
}
