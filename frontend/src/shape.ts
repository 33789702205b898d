/**
 * OpenAI / llama-server chat chunks -> UI events, incrementally and without I/O.
 *
 * The shaper is fed stream items one at a time and returns the events each one completes, so a
 * stream split anywhere shapes the same. It holds text back only where it must: a partial
 * `<think>` / `</think>` tag, and tool-call fragments, which are finalised only when the stream says
 * it is finished (a prefix of the arguments may parse as JSON and still be wrong).
 */
import { classified, classifyServerError, type ErrorCode } from "./errors.ts";
import type { ServerError, StreamItem } from "./sse.ts";

export type Phase = "pre-output" | "mid-stream";
export type Lane = "direct" | "fallback" | "resumed";

export interface TextDelta {
  type: "text_delta";
  text: string;
}
export interface ReasoningStart {
  type: "reasoning_start";
}
export interface ReasoningDelta {
  type: "reasoning_delta";
  text: string;
}
export interface ReasoningEnd {
  type: "reasoning_end";
}
export interface ToolStart {
  type: "tool_start";
  tool_name: string;
  tool_call_id: string;
  arguments: unknown;
}
export interface ToolStatus {
  type: "tool_status";
  content: string;
}
export interface ToolEnd {
  type: "tool_end";
  tool_name: string;
  tool_call_id: string;
  result: unknown;
}
export interface Usage {
  type: "usage";
  prompt_tokens: number;
  completion_tokens: number;
}
export interface Timings {
  type: "timings";
  predicted_per_second?: number;
  [field: string]: unknown;
}
/** Prompt processing progress (`return_progress: true`): shown while the first token is far off. */
export interface Progress {
  type: "progress";
  total: number;
  cache: number;
  processed: number;
  time_ms: number;
}
/** A line for the page that is neither output nor failure: "model loading", "reconnecting". */
export interface Notice {
  type: "notice";
  code: "model_loading" | "reconnecting";
  message: string;
}
export interface ErrorEvent {
  type: "error";
  message: string;
  code: ErrorCode;
  phase: Phase;
  /** Only for `bad_tool_arguments`: the model's own unparsable arguments. */
  raw?: string;
}
export interface Abort {
  type: "abort";
}
export interface Finish {
  type: "finish";
  finish_reason: string | null;
  lane: Lane;
}

export type UIEvent =
  | TextDelta
  | ReasoningStart
  | ReasoningDelta
  | ReasoningEnd
  | ToolStart
  | ToolStatus
  | ToolEnd
  | Usage
  | Timings
  | Progress
  | Notice
  | ErrorEvent
  | Abort
  | Finish;

/** One finalised tool call. `valid` is false when its arguments were not JSON (`arguments` is then null). */
export interface ToolCall {
  id: string;
  name: string;
  arguments: unknown;
  raw: string;
  valid: boolean;
}

/** The stream asked for tools; the client's tool loop turns this into tool_start / tool_end. */
export interface ToolCallsReady {
  type: "tool_calls";
  calls: ToolCall[];
}
/** The stream completed (`[DONE]`, or a finish_reason and then the end of the body). */
export interface StreamEnd {
  type: "end";
  finish_reason: string | null;
}

export type ShapedEvent =
  | TextDelta
  | ReasoningStart
  | ReasoningDelta
  | ReasoningEnd
  | Usage
  | Timings
  | Progress
  | ErrorEvent
  | ToolCallsReady
  | StreamEnd;

export interface ShaperOptions {
  /**
   * The chat template already opened `<think>` in the prompt and llama-server does not parse
   * reasoning, so content starts inside the think block and only `</think>` arrives. Without this,
   * such a lone `</think>` is dropped and what came before it stays text.
   */
  prefilledThink?: boolean;
  /** The request carried an image: lets an in-stream refusal say that the model cannot read images. */
  hasImage?: boolean;
}

const OPEN_TAG = "<think>";
const CLOSE_TAG = "</think>";
const REASONING_FIELDS = ["reasoning_content", "reasoning", "thinking"] as const;

/** Where the content channel is: deciding on a leading `<think>`, inside one, just past one, or text. */
type ContentMode = "start" | "inline" | "after" | "text";

interface PendingCall {
  index: number;
  id: string;
  name: string;
  args: string;
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export function nonEmptyString(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" ? value : undefined;
}

export function num(value: unknown): number {
  return typeof value === "number" && Number.isFinite(value) ? value : 0;
}

/** Length of the longest suffix of `text` that is a proper prefix of `tag`: bytes to hold back. */
function partialTagLength(text: string, tag: string): number {
  for (let n = Math.min(tag.length - 1, text.length); n > 0; n--) {
    if (tag.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}

export class StreamShaper {
  private reasoning: "none" | "open" | "closed" = "none";
  /** Reasoning text that so far is only whitespace: a block never opens on a blank line alone. */
  private reasoningLead = true;
  private mode: ContentMode;
  private held = "";
  /** The last few characters of text, to see an opening tag written across two deltas. */
  private textTail = "";
  private readonly calls = new Map<number, PendingCall>();
  private finishReason: string | null | undefined = undefined;
  private state: "streaming" | "done" | "failed" = "streaming";
  private delta = false;
  private readonly hasImage: boolean;

  constructor(options: ShaperOptions = {}) {
    this.mode = options.prefilledThink ? "inline" : "start";
    this.hasImage = options.hasImage ?? false;
  }

  /** True once a text or reasoning delta went out: the point of no return for a fallback. */
  get emittedDelta(): boolean {
    return this.delta;
  }

  /** True when nothing more is expected: `[DONE]`, an error frame, or a finish_reason was seen. */
  get complete(): boolean {
    return this.state !== "streaming" || this.finishReason !== undefined;
  }

  /** True once the stream ended with an error frame or a malformed event. */
  get failed(): boolean {
    return this.state === "failed";
  }

  get phase(): Phase {
    return this.delta ? "mid-stream" : "pre-output";
  }

  push(item: StreamItem): ShapedEvent[] {
    if (this.state !== "streaming") return [];
    const out: ShapedEvent[] = [];
    switch (item.kind) {
      case "chunk":
        this.chunk(item.chunk, out);
        break;
      case "done":
        if (this.finishReason === undefined) this.finalise(null, out);
        this.state = "done";
        out.push({ type: "end", finish_reason: this.finishReason ?? null });
        break;
      case "error":
        this.fail(item.error, out);
        break;
      case "malformed":
        this.flush(out);
        this.closeReasoning(out);
        this.state = "failed";
        out.push(this.errorEvent("bad_response"));
        break;
    }
    return out;
  }

  /** The transport ended. Without `[DONE]` or a finish_reason that is a truncation. */
  end(): ShapedEvent[] {
    if (this.state !== "streaming") return [];
    const out: ShapedEvent[] = [];
    if (this.finishReason !== undefined) {
      this.state = "done";
      out.push({ type: "end", finish_reason: this.finishReason });
      return out;
    }
    this.flush(out);
    this.closeReasoning(out);
    this.state = "failed";
    out.push(this.errorEvent("truncated"));
    return out;
  }

  private errorEvent(code: ErrorCode): ErrorEvent {
    const { message } = classified(code);
    return { type: "error", message, code, phase: this.phase };
  }

  private fail(error: ServerError, out: ShapedEvent[]): void {
    this.flush(out);
    this.closeReasoning(out);
    this.state = "failed";
    const { code, message } = classifyServerError(undefined, error, this.hasImage);
    out.push({ type: "error", message, code, phase: this.phase });
  }

  private chunk(chunk: Record<string, unknown>, out: ShapedEvent[]): void {
    const progress = chunk.prompt_progress;
    if (isRecord(progress)) {
      out.push({
        type: "progress",
        total: num(progress.total),
        cache: num(progress.cache),
        processed: num(progress.processed),
        time_ms: num(progress.time_ms),
      });
    }
    const choices = Array.isArray(chunk.choices) ? chunk.choices : [];
    const choice: unknown = choices[0];
    if (isRecord(choice)) {
      const delta = isRecord(choice.delta) ? choice.delta : {};
      // Servers name the channel differently; one that fills two of them means the same text twice.
      const reasoning = REASONING_FIELDS.map((field) => nonEmptyString(delta[field])).find((t) => t !== undefined);
      if (reasoning !== undefined) this.reasoningText(reasoning, out);
      const content = nonEmptyString(delta.content);
      if (content !== undefined) this.content(content, out);
      if (Array.isArray(delta.tool_calls)) this.toolDeltas(delta.tool_calls, out);
      const finish = nonEmptyString(choice.finish_reason);
      if (finish !== undefined && this.finishReason === undefined) this.finalise(finish, out);
    }
    const usage = chunk.usage;
    if (isRecord(usage)) {
      out.push({
        type: "usage",
        prompt_tokens: num(usage.prompt_tokens),
        completion_tokens: num(usage.completion_tokens),
      });
    }
    const timings = chunk.timings;
    if (isRecord(timings)) out.push({ ...timings, type: "timings" });
  }

  /** A reasoning field: llama-server parsed the think block itself, so content is text from here on. */
  private reasoningText(text: string, out: ShapedEvent[]): void {
    if (this.reasoning === "closed") return;
    if (this.mode === "start" || this.mode === "inline") {
      this.mode = "text";
      this.held = "";
    }
    this.emitReasoning(text, out);
  }

  /** Emit all but a trailing partial `</think>`, which waits in `held` for the next chunk. */
  private emitHoldingTag(buffer: string, emit: (text: string) => void): void {
    const keep = partialTagLength(buffer, CLOSE_TAG);
    emit(buffer.slice(0, buffer.length - keep));
    this.held = buffer.slice(buffer.length - keep);
  }

  private emitReasoning(text: string, out: ShapedEvent[]): void {
    const piece = this.reasoningLead ? text.replace(/^\s+/, "") : text;
    if (piece === "") return;
    this.reasoningLead = false;
    if (this.reasoning === "none") {
      this.reasoning = "open";
      out.push({ type: "reasoning_start" });
    }
    this.delta = true;
    out.push({ type: "reasoning_delta", text: piece });
  }

  private emitText(text: string, out: ShapedEvent[]): void {
    if (text === "") return;
    // An opening tag inside the text makes a later `</think>` its partner, not a lone close.
    if ((this.textTail + text).includes(OPEN_TAG)) this.textTail = OPEN_TAG;
    else this.textTail = (this.textTail + text).slice(-(OPEN_TAG.length - 1));
    this.closeReasoning(out);
    this.delta = true;
    out.push({ type: "text_delta", text });
  }

  private closeReasoning(out: ShapedEvent[]): void {
    if (this.mode === "inline") {
      const partial = this.held;
      this.held = "";
      this.mode = "after";
      if (partial !== "") this.emitReasoning(partial, out);
    }
    if (this.reasoning === "open") out.push({ type: "reasoning_end" });
    if (this.reasoning !== "none" || this.mode === "after") this.reasoning = "closed";
  }

  private content(text: string, out: ShapedEvent[]): void {
    let buffer = this.held + text;
    this.held = "";
    while (buffer !== "") {
      switch (this.mode) {
        case "start": {
          const trimmed = buffer.replace(/^\s+/, "");
          if (trimmed === "" || (trimmed.length < OPEN_TAG.length && OPEN_TAG.startsWith(trimmed))) {
            this.held = buffer;
            return;
          }
          if (trimmed.startsWith(OPEN_TAG) && this.reasoning === "none") {
            this.mode = "inline";
            buffer = trimmed.slice(OPEN_TAG.length);
            continue;
          }
          this.mode = "text";
          continue;
        }
        case "inline": {
          if (this.reasoning === "none" && this.reasoningLead) {
            const trimmed = buffer.replace(/^\s+/, "");
            if (trimmed.length < OPEN_TAG.length && OPEN_TAG.startsWith(trimmed)) {
              this.held = buffer;
              return;
            }
            if (trimmed.startsWith(OPEN_TAG)) buffer = trimmed.slice(OPEN_TAG.length);
          }
          const close = buffer.indexOf(CLOSE_TAG);
          if (close >= 0) {
            this.emitReasoning(buffer.slice(0, close), out);
            this.closeReasoning(out);
            buffer = buffer.slice(close + CLOSE_TAG.length);
            continue;
          }
          this.emitHoldingTag(buffer, (text) => this.emitReasoning(text, out));
          return;
        }
        case "after": {
          const trimmed = buffer.replace(/^\s+/, "");
          if (trimmed === "") return;
          this.mode = "text";
          buffer = trimmed;
          continue;
        }
        case "text": {
          if (this.reasoning !== "none" || this.textTail === OPEN_TAG) {
            this.emitText(buffer, out);
            return;
          }
          const close = buffer.indexOf(CLOSE_TAG);
          if (close >= 0 && (this.textTail + buffer.slice(0, close)).includes(OPEN_TAG)) {
            this.emitText(buffer, out);
            return;
          }
          if (close >= 0) {
            this.emitText(buffer.slice(0, close), out);
            this.reasoning = "closed";
            this.mode = "after";
            buffer = buffer.slice(close + CLOSE_TAG.length);
            continue;
          }
          this.emitHoldingTag(buffer, (text) => this.emitText(text, out));
          return;
        }
      }
    }
  }

  /** Emit whatever was held back for a tag that never completed, as what it would have been. */
  private flush(out: ShapedEvent[]): void {
    const held = this.held;
    this.held = "";
    if (held === "") return;
    if (this.mode === "inline") this.emitReasoning(held, out);
    else if (this.mode === "text" || (this.mode === "start" && held.trim() !== "")) this.emitText(held, out);
  }

  private toolDeltas(deltas: unknown[], out: ShapedEvent[]): void {
    this.flush(out);
    this.closeReasoning(out);
    if (this.mode !== "text") this.mode = "text";
    deltas.forEach((raw, position) => {
      if (!isRecord(raw)) return;
      const index = typeof raw.index === "number" ? raw.index : position;
      const call = this.calls.get(index) ?? { index, id: "", name: "", args: "" };
      const id = nonEmptyString(raw.id);
      if (id !== undefined) call.id = id;
      const fn = isRecord(raw.function) ? raw.function : {};
      call.name += nonEmptyString(fn.name) ?? "";
      call.args += typeof fn.arguments === "string" ? fn.arguments : "";
      this.calls.set(index, call);
    });
  }

  private finalise(finishReason: string | null, out: ShapedEvent[]): void {
    this.flush(out);
    this.closeReasoning(out);
    this.finishReason = finishReason;
    if (this.calls.size === 0) return;
    const calls: ToolCall[] = [...this.calls.values()]
      .sort((a, b) => a.index - b.index)
      .map((call) => {
        const id = call.id !== "" ? call.id : `call_${call.index}`;
        const source = call.args.trim() === "" ? "{}" : call.args;
        try {
          return { id, name: call.name, arguments: JSON.parse(source) as unknown, raw: call.args, valid: true };
        } catch {
          out.push({ ...this.errorEvent("bad_tool_arguments"), phase: "mid-stream", raw: call.args });
          return { id, name: call.name, arguments: null, raw: call.args, valid: false };
        }
      });
    this.calls.clear();
    out.push({ type: "tool_calls", calls });
  }
}

/** A whole body at once: for fixtures, tests and non-streaming callers. */
export function shapeItems(items: Iterable<StreamItem>, options?: ShaperOptions): ShapedEvent[] {
  const shaper = new StreamShaper(options);
  const out: ShapedEvent[] = [];
  for (const item of items) out.push(...shaper.push(item));
  out.push(...shaper.end());
  return out;
}

/** The flat-text view that Studio-style consumers expect: `<think>…</think>` then the answer. */
export function toFlatText(events: Iterable<UIEvent | ShapedEvent>): string {
  let text = "";
  let open = false;
  for (const event of events) {
    if (event.type === "reasoning_start") {
      text += "<think>";
      open = true;
    } else if (event.type === "reasoning_delta") {
      text += event.text;
    } else if (event.type === "reasoning_end" && open) {
      text += "</think>";
      open = false;
    } else if (event.type === "text_delta") {
      text += event.text;
    }
  }
  return open ? `${text}</think>` : text;
}
