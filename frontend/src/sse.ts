/**
 * Bytes -> server-sent events -> stream items.
 *
 * One decoder lives for one logical stream. A resumed stream (`GET /v1/stream?from=N`) continues the
 * same bytes at offset N, so its bytes go into the same decoder: a line, a CRLF or a UTF-8 sequence
 * that the offset split is joined exactly as if the connection had never broken.
 */
import { createParser, type EventSourceMessage, type EventSourceParser } from "eventsource-parser";

/** A line longer than this is not a chat chunk: refuse it instead of buffering without end. */
const MAX_BUFFERED_CHARS = 8 * 1024 * 1024;

export interface SSEEvent {
  event?: string;
  data: string;
  id?: string;
}

/** What llama-server sends in an error frame, or as the JSON body of a non-2xx answer. */
export interface ServerError {
  code?: number | string;
  message?: string;
  type?: string;
  n_prompt_tokens?: number;
  n_ctx?: number;
  [key: string]: unknown;
}

export type StreamItem =
  | { kind: "chunk"; chunk: Record<string, unknown> }
  | { kind: "done" }
  | { kind: "error"; error: ServerError }
  | { kind: "malformed" };

export interface SSEDecoder {
  /** Feed one read's bytes; returns the events that these bytes completed. */
  push(bytes: Uint8Array): SSEEvent[];
  /**
   * The transport ended. As the SSE spec says, an event with no blank line after it is discarded:
   * a half-received line is a truncation, not data. A final CR still ends its line.
   */
  end(): SSEEvent[];
  /** True once a line overflowed the buffer; the stream is then unusable. */
  readonly overflowed: boolean;
}

export function createSSEDecoder(): SSEDecoder {
  const text = new TextDecoder("utf-8", { fatal: false, ignoreBOM: false });
  let pending: SSEEvent[] = [];
  let overflowed = false;
  let endsWithCR = false;
  const onEvent = (message: EventSourceMessage): void => {
    const out: SSEEvent = { data: message.data };
    if (message.event !== undefined) out.event = message.event;
    if (message.id !== undefined) out.id = message.id;
    pending.push(out);
  };
  const parser: EventSourceParser = createParser({
    onEvent,
    onError: (error) => {
      if (error.type === "max-buffer-size-exceeded") overflowed = true;
    },
    maxBufferSize: MAX_BUFFERED_CHARS,
  });
  const take = (): SSEEvent[] => {
    const out = pending;
    pending = [];
    return out;
  };
  return {
    push(bytes: Uint8Array): SSEEvent[] {
      if (overflowed) return [];
      const chunk = text.decode(bytes, { stream: true });
      if (chunk !== "") {
        parser.feed(chunk);
        endsWithCR = chunk.endsWith("\r");
      }
      return take();
    },
    end(): SSEEvent[] {
      if (overflowed) return [];
      const tail = text.decode();
      if (tail !== "") {
        parser.feed(tail);
        endsWithCR = tail.endsWith("\r");
      }
      // The parser holds a trailing CR back in case an LF follows; none will, so complete it.
      if (endsWithCR) parser.feed("\n");
      parser.reset();
      return take();
    },
    get overflowed() {
      return overflowed;
    },
  };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Classify one SSE event. llama-server sends errors two ways: OpenAI-style `data: {"error": …}` and,
 * on its Anthropic-compatible routes, `event: error`; both end the generation.
 */
export function interpretEvent(event: SSEEvent): StreamItem {
  const data = event.data.trim();
  if (data === "[DONE]") return { kind: "done" };
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch {
    return event.event === "error" ? { kind: "error", error: {} } : { kind: "malformed" };
  }
  if (event.event === "error") {
    const inner = isRecord(parsed) && isRecord(parsed.error) ? parsed.error : parsed;
    return { kind: "error", error: isRecord(inner) ? (inner as ServerError) : {} };
  }
  if (!isRecord(parsed)) return { kind: "malformed" };
  if (parsed.error !== undefined && parsed.choices === undefined) {
    const inner = parsed.error;
    return { kind: "error", error: isRecord(inner) ? (inner as ServerError) : { message: String(inner) } };
  }
  return { kind: "chunk", chunk: parsed };
}

/** Parse a non-2xx body the way llama-server and the gate write it: `{"error": {...}}`. */
export function parseErrorBody(body: string): ServerError {
  try {
    const parsed: unknown = JSON.parse(body);
    if (isRecord(parsed) && isRecord(parsed.error)) return parsed.error as ServerError;
    if (isRecord(parsed) && typeof parsed.detail === "string") return { message: parsed.detail };
    return {};
  } catch {
    return {};
  }
}
