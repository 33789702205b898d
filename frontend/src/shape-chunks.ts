/**
 * The chat stream items that the Responses and Messages translators build: one delta, one tool-call
 * fragment, one finish. Chat's own shape, so that the one chat shaper decides what each means.
 */
import type { StreamItem } from "./sse.ts";

export type ChatDelta = { content: string } | { reasoning_content: string } | { tool_calls: ToolFragment[] };

interface ToolFragment {
  index: number;
  id?: string;
  function: { name?: string; arguments?: string };
}

export function deltaItem(delta: ChatDelta): StreamItem {
  return { kind: "chunk", chunk: { choices: [{ index: 0, delta, finish_reason: null }] } };
}

export const textItem = (text: string): StreamItem => deltaItem({ content: text });
export const reasoningItem = (text: string): StreamItem => deltaItem({ reasoning_content: text });

/** One fragment of tool call `index`: its id and name first, then pieces of its arguments. */
export function toolItem(index: number, fragment: { id?: string; name?: string; args?: string }): StreamItem {
  const call: ToolFragment = { index, function: {} };
  if (fragment.id !== undefined) call.id = fragment.id;
  if (fragment.name !== undefined) call.function.name = fragment.name;
  if (fragment.args !== undefined) call.function.arguments = fragment.args;
  return deltaItem({ tool_calls: [call] });
}

/** The end of a generation: its chat finish reason (null: none said), usage and whatever else rides along. */
export function finishItem(
  finishReason: string | null,
  usage: { prompt_tokens: number; completion_tokens: number } | undefined,
  extra: Record<string, unknown> = {},
): StreamItem {
  const chunk: Record<string, unknown> = { ...extra, choices: [{ index: 0, delta: {}, finish_reason: finishReason }] };
  if (usage !== undefined) chunk.usage = usage;
  return { kind: "chunk", chunk };
}

/**
 * The text a stream has sent for each of its parts, so that a final event carrying the whole part
 * (llama-server's `…done` events hold the last token's diff, sent in no delta) adds only what is new.
 */
export class SentText {
  private readonly sent = new Map<string, string>();

  add(key: string, text: string): void {
    this.sent.set(key, (this.sent.get(key) ?? "") + text);
  }

  /** What `whole` adds to what was sent for `key`; "" when nothing, or when it disagrees (it cannot be unsent). */
  rest(key: string, whole: string): string {
    const sent = this.sent.get(key) ?? "";
    if (whole.length <= sent.length || !whole.startsWith(sent)) return "";
    this.sent.set(key, whole);
    return whole.slice(sent.length);
  }

  has(key: string): boolean {
    return this.sent.has(key);
  }
}
