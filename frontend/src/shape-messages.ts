/**
 * Anthropic Messages stream events -> chat stream items (`shape-format.ts` shapes them).
 *
 * llama-server (11434, `to_json_anthropic` in `tools/server/server-task.cpp`) sends `message_start`
 * with the prompt's usage, then content blocks by index: `thinking` (`thinking_delta`), `text`
 * (`text_delta`) and `tool_use` (its id and name at `content_block_start`, then `input_json_delta`
 * fragments), then `message_delta` with the stop reason and the output tokens, and `message_stop`;
 * there is no `[DONE]`. Three of its habits are tolerated: no `message_start` at all when the stream
 * opens on part of a character (the prompt's tokens are then unknown: 0); its final result starting a
 * `tool_use` block again (same id) when the last argument fragment comes with it; and block indices
 * counted from the final message rather than the stream so far. Errors come as `event: error`, which
 * `sse.ts` already reads.
 */
import { isRecord, nonEmptyString, num } from "./shape.ts";
import { finishItem, reasoningItem, textItem, toolItem } from "./shape-chunks.ts";
import type { Translator } from "./shape-format.ts";
import type { ServerError, StreamItem } from "./sse.ts";

/** Anthropic's stop reasons in chat's words; any other passes as it is. */
const STOP_REASONS: Readonly<Record<string, string>> = {
  end_turn: "stop",
  stop_sequence: "stop",
  max_tokens: "length",
  tool_use: "tool_calls",
};

function text(value: unknown): string {
  return typeof value === "string" ? value : "";
}

/** A block's or a delta's words, in its field `text` or `thinking` (the same in both), as its item; empty is none. */
function said(source: Record<string, unknown>, field: "text" | "thinking"): StreamItem[] {
  const words = text(source[field]);
  if (words === "") return [];
  return [field === "text" ? textItem(words) : reasoningItem(words)];
}

/** The prompt's tokens as chat counts them: the uncached ones plus those read from (or written to) the cache. */
function promptTokens(usage: Record<string, unknown>): number {
  return num(usage.input_tokens) + num(usage.cache_read_input_tokens) + num(usage.cache_creation_input_tokens);
}

export class MessagesTranslator implements Translator {
  private prompt = 0;
  private calls = 0;
  /** Each `tool_use` block's index -> its call's index; each call's id -> its index. */
  private readonly blocks = new Map<number, number>();
  private readonly ids = new Map<string, number>();

  translate(event: Record<string, unknown>): StreamItem[] {
    switch (event.type) {
      case "message_start": {
        const message = isRecord(event.message) ? event.message : {};
        if (isRecord(message.usage)) this.prompt = promptTokens(message.usage);
        return [];
      }
      case "content_block_start":
        return isRecord(event.content_block) ? this.blockStart(num(event.index), event.content_block) : [];
      case "content_block_delta":
        return isRecord(event.delta) ? this.delta(num(event.index), event.delta) : [];
      case "message_delta":
        return [this.finish(isRecord(event.delta) ? event.delta : {}, isRecord(event.usage) ? event.usage : undefined)];
      case "message_stop":
        return [{ kind: "done" }];
      case "error": {
        const error = isRecord(event.error) ? (event.error as ServerError) : {};
        return [{ kind: "error", error }];
      }
      default:
        return [];
    }
  }

  private blockStart(index: number, block: Record<string, unknown>): StreamItem[] {
    switch (block.type) {
      case "text":
      case "thinking":
        return said(block, block.type);
      case "tool_use": {
        const id = nonEmptyString(block.id);
        const known = id === undefined ? undefined : this.ids.get(id);
        if (known !== undefined) {
          this.blocks.set(index, known);
          return [];
        }
        const call = this.calls++;
        this.blocks.set(index, call);
        if (id !== undefined) this.ids.set(id, call);
        return [toolItem(call, { id, name: text(block.name) })];
      }
      default:
        return [];
    }
  }

  private delta(index: number, delta: Record<string, unknown>): StreamItem[] {
    switch (delta.type) {
      case "text_delta":
        return said(delta, "text");
      case "thinking_delta":
        return said(delta, "thinking");
      case "input_json_delta": {
        const call = this.blocks.get(index);
        const args = text(delta.partial_json);
        return call === undefined || args === "" ? [] : [toolItem(call, { args })];
      }
      default:
        return [];
    }
  }

  private finish(delta: Record<string, unknown>, usage: Record<string, unknown> | undefined): StreamItem {
    const stop = nonEmptyString(delta.stop_reason);
    const reason = stop === undefined ? null : (STOP_REASONS[stop] ?? stop);
    if (usage !== undefined && usage.input_tokens !== undefined) this.prompt = promptTokens(usage);
    const counted = usage === undefined ? undefined : { prompt_tokens: this.prompt, completion_tokens: num(usage.output_tokens) };
    return finishItem(reason, counted);
  }
}
