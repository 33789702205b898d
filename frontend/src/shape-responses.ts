/**
 * OpenAI Responses stream events -> chat stream items (`shape-format.ts` shapes them).
 *
 * llama-server (11434, `to_json_oaicompat_resp` in `tools/server/server-task.cpp`) sends text as
 * `response.output_text.delta`, reasoning as `response.reasoning_text.delta`, a tool call as a
 * `function_call` item (`response.output_item.added`) and its `response.function_call_arguments.delta`
 * fragments, and ends with `response.completed`, which carries the usage and the timings; there is no
 * `[DONE]`. Its final result sends no deltas, only the `…done` events with each part whole, so the
 * last token's text (or a tool call parsed only at the end) is taken from those. OpenAI's own names
 * are read too: reasoning summaries, `response.incomplete`, `response.failed` and the `error` event.
 */
import { isRecord, nonEmptyString, num } from "./shape.ts";
import { finishItem, reasoningItem, SentText, textItem, toolItem } from "./shape-chunks.ts";
import type { Translator } from "./shape-format.ts";
import type { ServerError, StreamItem } from "./sse.ts";

/** Fields that ride on any event and mean what they mean in a chat chunk. */
const PASSED = ["prompt_progress", "timings"] as const;

function text(value: unknown): string {
  return typeof value === "string" ? value : "";
}

/** The text of an item's parts of the given types, joined. */
function partsText(parts: unknown, types: readonly string[]): string {
  if (!Array.isArray(parts)) return "";
  return parts
    .filter((part): part is Record<string, unknown> => isRecord(part) && types.includes(String(part.type)))
    .map((part) => text(part.text))
    .join("");
}

export class ResponsesTranslator implements Translator {
  private readonly sent = new SentText();
  /** Each function call's item id -> its index among the calls, in the order they were added. */
  private readonly calls = new Map<string, number>();

  translate(event: Record<string, unknown>): StreamItem[] {
    const out = this.items(event);
    const passed = PASSED.filter((field) => isRecord(event[field]));
    if (passed.length === 0) return out;
    const extra = Object.fromEntries(passed.map((field) => [field, event[field]]));
    const last = out.filter((item) => item.kind === "chunk").pop();
    if (last !== undefined) Object.assign(last.chunk, extra);
    else out.unshift({ kind: "chunk", chunk: extra });
    return out;
  }

  private items(event: Record<string, unknown>): StreamItem[] {
    const itemId = text(event.item_id);
    switch (event.type) {
      case "response.output_text.delta":
        return this.piece(`text:${itemId}`, text(event.delta), textItem);
      case "response.reasoning_text.delta":
      case "response.reasoning_summary_text.delta":
        return this.piece(`reasoning:${itemId}`, text(event.delta), reasoningItem);
      case "response.output_text.done":
        return this.rest(`text:${itemId}`, text(event.text), textItem);
      case "response.function_call_arguments.delta":
        return this.args(this.callIndex(itemId), text(event.delta), false);
      case "response.function_call_arguments.done":
        return this.args(this.callIndex(itemId), text(event.arguments), true);
      case "response.output_item.added":
        return isRecord(event.item) && event.item.type === "function_call" ? this.call(event.item) : [];
      case "response.output_item.done":
        return isRecord(event.item) ? this.itemDone(event.item) : [];
      case "response.completed":
      case "response.incomplete":
        return this.finish(isRecord(event.response) ? event.response : {});
      case "response.failed": {
        const response = isRecord(event.response) ? event.response : {};
        return [{ kind: "error", error: isRecord(response.error) ? (response.error as ServerError) : {} }];
      }
      case "error":
        return [{ kind: "error", error: { code: event.code as ServerError["code"], message: text(event.message) } }];
      default:
        return [];
    }
  }

  private piece(key: string, delta: string, item: (text: string) => StreamItem): StreamItem[] {
    if (delta === "") return [];
    this.sent.add(key, delta);
    return [item(delta)];
  }

  private rest(key: string, whole: string, item: (text: string) => StreamItem): StreamItem[] {
    const rest = this.sent.rest(key, whole);
    return rest === "" ? [] : [item(rest)];
  }

  private callIndex(itemId: string): number | undefined {
    return this.calls.get(itemId) ?? (this.calls.size > 0 ? this.calls.size - 1 : undefined);
  }

  /** A new function call: its call id (what a `function_call_output` names) and name, and any arguments. */
  private call(item: Record<string, unknown>): StreamItem[] {
    const index = this.calls.size;
    this.calls.set(text(item.id) || `call_${index}`, index);
    const fragment = { id: nonEmptyString(item.call_id) ?? nonEmptyString(item.id), name: text(item.name) };
    return [toolItem(index, fragment), ...this.args(index, text(item.arguments), false)];
  }

  private args(index: number | undefined, args: string, whole: boolean): StreamItem[] {
    if (index === undefined) return [];
    const key = `args:${index}`;
    const piece = whole ? this.sent.rest(key, args) : args;
    if (piece === "") return [];
    if (!whole) this.sent.add(key, piece);
    return [toolItem(index, { args: piece })];
  }

  private itemDone(item: Record<string, unknown>): StreamItem[] {
    const id = text(item.id);
    switch (item.type) {
      case "message":
        return this.rest(`text:${id}`, partsText(item.content, ["output_text"]), textItem);
      case "reasoning": {
        const whole = partsText(item.content, ["reasoning_text"]) || partsText(item.summary, ["summary_text"]);
        return this.rest(`reasoning:${id}`, whole, reasoningItem);
      }
      case "function_call":
        if (!this.calls.has(id)) return this.call(item);
        return this.args(this.calls.get(id), text(item.arguments), true);
      default:
        return [];
    }
  }

  /** The end: a chat finish reason, the usage, then the end of the stream (Responses sends no `[DONE]`). */
  private finish(response: Record<string, unknown>): StreamItem[] {
    const details = isRecord(response.incomplete_details) ? response.incomplete_details : {};
    let reason = "stop";
    if (this.calls.size > 0) reason = "tool_calls";
    else if (response.status === "incomplete") reason = details.reason === "max_output_tokens" ? "length" : text(details.reason) || "stop";
    const usage = isRecord(response.usage)
      ? { prompt_tokens: num(response.usage.input_tokens), completion_tokens: num(response.usage.output_tokens) }
      : undefined;
    return [finishItem(reason, usage), { kind: "done" }];
  }
}
