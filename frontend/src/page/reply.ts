/**
 * One assistant reply in the DOM, driven by UI events. Text only ever goes in with `textContent`:
 * model output is untrusted and never parsed as HTML.
 */
import type { Lane, UIEvent } from "../shape.ts";
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

export class ReplyView {
  readonly root: HTMLLIElement;
  private readonly body: HTMLDivElement;
  private readonly status: HTMLDivElement;
  private readonly laneTag: HTMLSpanElement;
  private text: HTMLDivElement | null = null;
  private think: { details: HTMLDetailsElement; summary: HTMLElement; body: HTMLDivElement; started: number } | null =
    null;
  private readonly tools = new Map<string, { state: HTMLSpanElement; result: HTMLPreElement }>();
  /** The reply's visible text, for the conversation history. */
  content = "";
  lane: Lane | null = null;
  tokensPerSecond: number | null = null;

  constructor() {
    this.root = el("li", "msg assistant");
    this.root.dataset.state = "streaming";
    const who = el("div", "who", "Assistant");
    this.laneTag = el("span", "lane-tag");
    this.laneTag.hidden = true;
    who.append(this.laneTag);
    this.body = el("div", "body");
    this.status = el("div", "status-line", "Waiting for the model…");
    this.root.append(who, this.body, this.status);
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

  private textNode(): HTMLDivElement {
    if (this.text === null) {
      this.text = el("div", "text");
      this.body.append(this.text);
    }
    return this.text;
  }

  apply(event: UIEvent): void {
    switch (event.type) {
      case "text_delta":
        this.status.textContent = "";
        this.textNode().textContent += event.text;
        this.content += event.text;
        break;
      case "reasoning_start": {
        const details = el("details", "think");
        details.open = true;
        const summary = el("summary", undefined, "Thinking…");
        const body = el("div", "body");
        details.append(summary, body);
        this.body.append(details);
        this.think = { details, summary, body, started: performance.now() };
        this.status.textContent = "";
        break;
      }
      case "reasoning_delta":
        if (this.think !== null) this.think.body.textContent += event.text;
        break;
      case "reasoning_end":
        if (this.think !== null) {
          const seconds = (performance.now() - this.think.started) / 1000;
          this.think.summary.textContent = `Thought for ${seconds.toFixed(1)} s`;
          this.think.details.open = false;
        }
        break;
      case "tool_start": {
        const card = el("div", "tool");
        card.setAttribute("role", "group");
        card.setAttribute("aria-label", `Tool ${event.tool_name}`);
        const head = el("div", "head", `Tool: ${event.tool_name}`);
        const state = el("span", "state", "running…");
        head.append(state);
        const args = el("pre", "args", pretty(event.arguments));
        const result = el("pre", "result");
        card.append(head, args, result);
        this.body.append(card);
        this.tools.set(event.tool_call_id, { state, result });
        this.text = null;
        break;
      }
      case "tool_status":
        this.status.textContent = event.content;
        break;
      case "tool_end": {
        const card = this.tools.get(event.tool_call_id);
        if (card !== undefined) {
          const failed = typeof event.result === "object" && event.result !== null && "error" in event.result;
          card.state.textContent = failed ? "failed" : "done";
          card.result.textContent = `→ ${pretty(event.result)}`;
        }
        break;
      }
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
      case "error": {
        const error = el("div", "error", event.message);
        error.setAttribute("role", "alert");
        this.body.append(error);
        this.status.textContent = "";
        if (event.code !== "bad_tool_arguments") this.setState("error");
        break;
      }
      case "abort":
        this.status.textContent = "Stopped.";
        this.setState("stopped");
        break;
      case "finish":
        this.status.textContent = "";
        this.lane = event.lane;
        this.laneTag.textContent = event.lane;
        this.laneTag.hidden = false;
        this.root.dataset.lane = event.lane;
        if (this.state === "streaming") this.setState("done");
        break;
    }
  }
}
