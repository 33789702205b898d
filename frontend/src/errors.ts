/**
 * Friendly error text. A server's own message may carry a path, a token or a stack, so none is ever
 * shown: each known case gets a sentence written here, and everything else the generic one. The
 * only server-sent values that reach the text are the two token counts, checked to be integers.
 */
import type { ServerError } from "./sse.ts";

export type ErrorCode =
  | "context_overflow"
  | "connection_lost"
  | "truncated"
  | "session_expired"
  | "rate_limited"
  | "vision_unsupported"
  | "model_loading"
  | "bad_request"
  | "bad_response"
  | "bad_tool_arguments"
  | "tool_rounds_exceeded"
  | "server_error";

const MESSAGES: Record<ErrorCode, string> = {
  context_overflow: "Message too long for the model's context window. Shorten it or start a new chat.",
  connection_lost: "The connection was lost. Check your network and try again.",
  truncated: "The connection was lost before the reply finished. The partial reply is kept above.",
  session_expired: "Your session has expired. Open the sign-in link again to continue.",
  rate_limited: "Too many requests right now. Wait a moment and try again.",
  vision_unsupported: "This model cannot read images. Remove the image and send again.",
  model_loading: "The model is still loading. Try again in a moment.",
  bad_request: "The server could not accept this message. Try rephrasing it or start a new chat.",
  bad_response: "The server sent a reply this page could not read. Please try again.",
  bad_tool_arguments: "The model asked for a tool with arguments that are not valid JSON.",
  tool_rounds_exceeded: "Stopped: the model kept asking for tools past the round limit.",
  server_error: "Something went wrong while generating the reply. Please try again.",
};

export function friendlyMessage(code: ErrorCode): string {
  return MESSAGES[code];
}

function positiveInt(value: unknown): number | undefined {
  return typeof value === "number" && Number.isInteger(value) && value > 0 ? value : undefined;
}

/** llama-server's `exceed_context_size_error` carries both counts; say them, as a person would want. */
export function contextOverflowMessage(error: ServerError): string {
  const prompt = positiveInt(error.n_prompt_tokens);
  const ctx = positiveInt(error.n_ctx);
  if (prompt === undefined || ctx === undefined) return MESSAGES.context_overflow;
  return (
    `Message too long: ${prompt.toLocaleString("en-US")} tokens exceeds the ` +
    `${ctx.toLocaleString("en-US")}-token context window. Shorten it or start a new chat.`
  );
}

export interface Classified {
  code: ErrorCode;
  message: string;
}

export function classified(code: ErrorCode): Classified {
  return { code, message: MESSAGES[code] };
}

/**
 * Map an HTTP status (undefined for an in-stream error frame) and llama-server's error object to a
 * code and a sentence. `hasImage` lets a refusal of an image request say why: llama-server without
 * a projector answers 500 there, and the gate's image shaping 400.
 */
export function classifyServerError(
  status: number | undefined,
  error: ServerError,
  hasImage: boolean,
): Classified {
  if (error.type === "exceed_context_size_error") {
    return { code: "context_overflow", message: contextOverflowMessage(error) };
  }
  const effective = status ?? (typeof error.code === "number" ? error.code : undefined);
  if (hasImage && (effective === 400 || effective === 415 || effective === 500 || effective === 501)) {
    return classified("vision_unsupported");
  }
  if (effective === 401) return classified("session_expired");
  if (effective === 429) return classified("rate_limited");
  if (effective === 503) return classified("model_loading");
  if (effective === 400 || effective === 413) return classified("bad_request");
  return classified("server_error");
}
