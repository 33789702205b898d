/**
 * The conversation as data: one turn is the user's message and the reply to it. What each request
 * sends is derived from the turns, so edit, regenerate and retry are "cut here, run again".
 */
import type { ChatMessage } from "../client.ts";

export interface TurnData {
  text: string;
  /** The attached image as a data URL, or null. */
  image: string | null;
  /** The reply's visible text so far ("" before it, or when it failed before any text). */
  reply: string;
  /**
   * Earlier answers kept by Regenerate, each with the turns that followed it, to flip back to; at
   * least two when present. The one at `branch` is the live one, held in `reply` and the later turns.
   */
  branches?: Branch[];
  branch?: number;
  /** The conversation id of this turn's reply while it streams (a resumable stream on the lane), so a
   * reload picks the stream up again; gone once the reply settles. */
  pending?: string;
}

/** One answer to a turn and the conversation that went on after it. */
export interface Branch {
  reply: string;
  later: TurnData[];
}

export function userContent(turn: Pick<TurnData, "text" | "image">): ChatMessage["content"] {
  if (turn.image === null) return turn.text;
  return [
    { type: "text", text: turn.text },
    { type: "image_url", image_url: { url: turn.image } },
  ];
}

/**
 * The messages for turn `index`'s request: every earlier turn that got an answer (a message whose
 * reply failed before any text is left out, as it was never answered), then this turn's user message,
 * after an optional system prompt.
 */
export function historyFor(turns: readonly TurnData[], index: number, system = ""): ChatMessage[] {
  const messages: ChatMessage[] = system.trim() === "" ? [] : [{ role: "system", content: system }];
  for (const turn of turns.slice(0, index)) {
    if (turn.reply === "") continue;
    messages.push({ role: "user", content: userContent(turn) }, { role: "assistant", content: turn.reply });
  }
  const current = turns[index];
  if (current !== undefined) messages.push({ role: "user", content: userContent(current) });
  return messages;
}
