/**
 * One assistant reply in the DOM, driven by UI events. Model text is Markdown, rendered through the
 * sanitizer (`markdown.ts`); reasoning, tool arguments and results go in with `textContent` only.
 */
import type { Lane, UIEvent } from "../shape.ts";
import { actionBar } from "./actions.ts";
import { showLane } from "./lane.ts";
import { MarkdownView, nextFrame } from "./markdown_view.ts";
import { loadingLine } from "./models.ts";

export type ReplyState = "streaming" | "done" | "error" | "stopped";

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className !== undefined) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function pretty(value: unknown): string {
  try {
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

interface Think {
  details: HTMLDetailsElement;
  summary: HTMLElement;
  body: HTMLDivElement;
  started: number;
  ended: boolean;
}

export class ReplyView {
  readonly root: HTMLLIElement;
  private readonly body: HTMLDivElement;
  private readonly status: HTMLDivElement;
  private readonly laneTag: HTMLSpanElement;
  private text: MarkdownView | null = null;
  private readonly texts: MarkdownView[] = [];
  private think: Think | null = null;
  private readonly tools = new Map<string, { state: HTMLSpanElement; result: HTMLPreElement }>();
  private settled = false;
  private frameQueued = false;
  lane: Lane | null = null;
  tokensPerSecond: number | null = null;
  /** Seconds from this reply's start (the message sent) to its first text or reasoning token. */
  firstTokenSeconds: number | null = null;
  private readonly started = performance.now();

  /** `onRender` runs after each render of new text (the page follows it with the scroll). */
  constructor(private readonly onRender: () => void = () => undefined) {
    this.root = el("li", "msg assistant");
    this.root.dataset.state = "streaming";
    const who = el("div", "who", "Assistant");
    this.laneTag = el("span", "lane-tag");
    this.laneTag.hidden = true;
    who.append(this.laneTag);
    this.body = el("div", "body");
    this.status = el("div", "status-line", "Waiting for the model…");
    this.status.setAttribute("role", "status");
    this.root.append(who, this.body, this.status);
  }

  /** A reply read back from storage: its text, settled, with its actions. */
  static restored(content: string, onRender: () => void = () => undefined): ReplyView {
    const view = new ReplyView(onRender);
    view.status.textContent = "";
    if (content !== "") view.textView().set(content);
    view.settle(content === "" ? "error" : "done");
    return view;
  }

  /** The reply's visible text (Markdown source), for the conversation history and Copy. */
  get content(): string {
    return this.texts.map((view) => view.text).join("");
  }

  /** Name the model that answers, beside "Assistant". */
  showModel(name: string): void {
    const tag = el("span", "model-tag", name);
    this.root.dataset.model = name;
    this.root.querySelector(".who")?.append(tag);
  }

  /**
   * The router is loading the chosen model (with its fraction, when the router reported it): shown
   * until the prompt's progress or a token replaces it.
   */
  showModelLoading(name: string, loading: boolean, progress?: number): void {
    if (this.content !== "" || this.state !== "streaming") return;
    const text = this.status.textContent ?? "";
    const ours = text === "" || text.startsWith("Waiting") || text.startsWith("Loading ");
    if (loading && ours) this.status.textContent = loadingLine(name, progress);
    else if (!loading && text.startsWith("Loading ")) this.status.textContent = "Waiting for the model…";
  }

  get state(): ReplyState {
    return (this.root.dataset.state as ReplyState | undefined) ?? "streaming";
  }

  private setState(state: ReplyState): void {
    this.root.dataset.state = state;
  }

  private textView(): MarkdownView {
    if (this.text === null) {
      this.text = new MarkdownView(this.onRender);
      this.texts.push(this.text);
      this.body.append(this.text.root);
    }
    return this.text;
  }

  /** The reasoning block's label ends in "Thought for N s" however the reasoning ends. */
  private endThink(): void {
    const think = this.think;
    if (think === null || think.ended) return;
    think.ended = true;
    const seconds = (performance.now() - think.started) / 1000;
    think.summary.textContent = `Thought for ${seconds.toFixed(1)} s`;
    think.details.open = false;
  }

  /**
   * A reply that landed entirely in reasoning and then stopped on its own is shown as the reply (its
   * block then goes). One cut off by the token cap mid-thought stays reasoning, with a line saying so.
   */
  private promoteReasoning(reason: string | null): void {
    if (reason === "length" && this.content === "" && this.think !== null) {
      this.status.textContent = "The reply reached its length limit while thinking.";
      return;
    }
    const reasoning = this.think?.body.textContent ?? "";
    if (this.content !== "" || reasoning.trim() === "" || this.tools.size > 0) return;
    this.think?.details.remove();
    this.think = null;
    this.textView().set(reasoning);
    this.root.dataset.promoted = "reasoning";
  }

  /** The end of the reply: render the rest, end the reasoning, offer the actions. */
  private settle(state: ReplyState, reason: string | null = null): void {
    if (this.settled) return;
    this.settled = true;
    this.endThink();
    if (state === "done") this.promoteReasoning(reason);
    // Only what changed since the last frame is rebuilt: a long reply's end costs one block, not all.
    for (const view of this.texts) view.render();
    if (this.state === "streaming") this.setState(state);
    const failed = this.state === "error" && this.content === "";
    const actions = failed ? actionBar("retry") : this.content === "" ? actionBar("regenerate") : actionBar("copy", "regenerate");
    this.root.append(actions);
    this.onRender();
  }

  apply(event: UIEvent): void {
    if (this.firstTokenSeconds === null && (event.type === "text_delta" || event.type === "reasoning_delta")) {
      this.firstTokenSeconds = (performance.now() - this.started) / 1000;
    }
    switch (event.type) {
      case "text_delta":
        this.status.textContent = "";
        this.endThink();
        this.textView().append(event.text);
        break;
      case "reasoning_start":
        this.startThink();
        break;
      case "reasoning_delta":
        if (this.think !== null) this.think.body.append(event.text);
        this.renderSoon();
        break;
      case "reasoning_end":
        this.endThink();
        break;
      case "tool_start":
        this.addTool(event.tool_call_id, event.tool_name, event.arguments);
        break;
      case "tool_status":
        this.status.textContent = event.content;
        break;
      case "tool_end":
        this.endTool(event.tool_call_id, event.result);
        break;
      case "progress":
        if (this.content === "" && event.total > 0) {
          const percent = Math.round((100 * event.processed) / event.total);
          this.status.textContent = `Reading the prompt… ${percent}%`;
        }
        break;
      case "timings":
        if (typeof event.predicted_per_second === "number") this.tokensPerSecond = event.predicted_per_second;
        break;
      case "usage":
      case "notice":
        break;
      case "error":
        this.showError(event.message, event.code !== "bad_tool_arguments");
        break;
      case "abort":
        this.status.textContent = "Stopped.";
        this.settle("stopped");
        break;
      case "finish":
        this.status.textContent = "";
        this.lane = event.lane;
        showLane(this.laneTag, event.lane);
        this.root.dataset.lane = event.lane;
        this.settle("done", event.finish_reason);
        break;
    }
  }

  /** Follow the reasoning once per frame, not once per token. */
  private renderSoon(): void {
    if (this.frameQueued) return;
    this.frameQueued = true;
    nextFrame(() => {
      this.frameQueued = false;
      this.onRender();
    });
  }

  private startThink(): void {
    const details = el("details", "think");
    details.open = true;
    const summary = el("summary", undefined, "Thinking…");
    const body = el("div", "body");
    details.append(summary, body);
    this.body.append(details);
    this.think = { details, summary, body, started: performance.now(), ended: false };
    this.status.textContent = "";
    this.text = null;
  }

  private addTool(id: string, name: string, args: unknown): void {
    const card = el("div", "tool");
    card.setAttribute("role", "group");
    card.setAttribute("aria-label", `Tool ${name}`);
    const head = el("div", "head", `Tool: ${name}`);
    const state = el("span", "state", "running…");
    head.append(state);
    const result = el("pre", "result");
    card.append(head, el("pre", "args", pretty(args)), result);
    this.body.append(card);
    this.tools.set(id, { state, result });
    this.text = null;
  }

  private endTool(id: string, result: unknown): void {
    const card = this.tools.get(id);
    if (card === undefined) return;
    const failed = typeof result === "object" && result !== null && "error" in result;
    card.state.textContent = failed ? "failed" : "done";
    card.result.textContent = `→ ${pretty(result)}`;
  }

  private showError(message: string, fatal: boolean): void {
    const error = el("div", "error", message);
    error.setAttribute("role", "alert");
    this.body.append(error);
    this.status.textContent = "";
    if (fatal) this.settle("error");
    else this.onRender();
  }
}
