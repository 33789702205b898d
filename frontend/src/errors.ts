/**
 * Friendly error text. A server's own message may carry a path, a token or a stack, so none is ever
 * shown: each known case gets a sentence written here, and everything else the generic one. The
 * only server-sent values that reach the text are the two token counts, checked to be integers.
 *
 * The cause is read from the refusal's code (`error.reason`, one of the catalogue in
 * `llama_direct/refusals.py`), or from llama-server's own `error.type`; the HTTP status is only the
 * last resort, for an answer that carries neither (a proxy's page, an empty body).
 */
import type { ServerError } from "./sse.ts";

export type ErrorCode =
  | "context_overflow"
  | "connection_lost"
  | "truncated"
  | "session_expired"
  | "rate_limited"
  | "too_many_streams"
  | "budget_exhausted"
  | "vision_unsupported"
  | "image_rejected"
  | "model_loading"
  | "model_not_loaded"
  | "unknown_model"
  | "stream_lost"
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
  too_many_streams: "Too many replies are running for you at once. Wait for one to finish, then try again.",
  budget_exhausted: "You have used your token budget for now. Try again later, or ask for a larger budget.",
  vision_unsupported: "This model cannot read images. Remove the image and send again.",
  image_rejected: "The image could not be sent: use a PNG, JPEG, WebP, GIF, BMP or TIFF within the size limit.",
  model_loading: "The model is still loading. Try again in a moment.",
  model_not_loaded: "This model is not loaded. Pick a loaded model, or allow loading it.",
  unknown_model: "This model is not offered on this server. Pick another one.",
  stream_lost: "The server that was writing this reply went away, so it cannot be resumed. Send the message again.",
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

const TOKEN_REASONS = [
  "invalid_token", "missing_token", "malformed_token", "algorithm_not_allowed", "unknown_key", "bad_signature",
  "token_expired", "token_not_yet_valid", "wrong_audience", "wrong_issuer", "missing_claim", "token_spent",
  "token_revoked", "token_predates_gate", "login_required", "bad_access_token",
] as const;
const IMAGE_REASONS = ["image_too_large", "image_too_many_pixels", "bad_image", "remote_image", "too_many_images"] as const;
const UNAVAILABLE_REASONS = ["upstream_unavailable", "app_unavailable", "upstream_timeout", "internal_error"] as const;

/** Refusal codes with a cause of their own; any other code is read by its status (`fromStatus`). */
export const REASONS: ReadonlyMap<string, ErrorCode> = new Map<string, ErrorCode>([
  ...TOKEN_REASONS.map((reason): [string, ErrorCode] => [reason, "session_expired"]),
  ...IMAGE_REASONS.map((reason): [string, ErrorCode] => [reason, "image_rejected"]),
  ...UNAVAILABLE_REASONS.map((reason): [string, ErrorCode] => [reason, "server_error"]),
  ["vision_not_supported", "vision_unsupported"],
  ["model_not_loaded", "model_not_loaded"],
  ["unknown_model", "unknown_model"],
  ["stream_lost", "stream_lost"],
  ["rate_limited", "rate_limited"],
  ["too_many_streams", "too_many_streams"],
  ["budget_exhausted", "budget_exhausted"],
  ["prompt_too_large", "context_overflow"],
  ["gate_unavailable", "model_loading"],
  ["http_version_not_supported", "server_error"],
]);

/** llama-server's own `error.type` values, which carry no `reason`. */
const LLAMA_TYPES: ReadonlyMap<string, ErrorCode> = new Map<string, ErrorCode>([
  ["authentication_error", "session_expired"],
  ["unavailable_error", "model_loading"],
  ["invalid_request_error", "bad_request"],
  ["not_supported_error", "server_error"],
  ["server_error", "server_error"],
]);

/** What a llama-server without a projector answers to an image, by its `type`. */
const IMAGE_REFUSAL_TYPES = new Set(["invalid_request_error", "not_supported_error", "server_error"]);

/**
 * Map a refusal or llama-server's error object (plus the HTTP status, undefined for an in-stream
 * error frame) to a code and a sentence. `hasImage` lets llama-server's own refusal of an image say
 * why: without a projector it answers an image request with a 400 or 500 that names no cause.
 */
export function classifyServerError(
  status: number | undefined,
  error: ServerError,
  hasImage: boolean,
): Classified {
  if (error.type === "exceed_context_size_error") {
    return { code: "context_overflow", message: contextOverflowMessage(error) };
  }
  if (typeof error.reason === "string") {
    return classified(REASONS.get(error.reason) ?? fromStatus(status ?? error.code));
  }
  const llamaCode = typeof error.type === "string" ? LLAMA_TYPES.get(error.type) : undefined;
  if (llamaCode !== undefined) {
    if (hasImage && IMAGE_REFUSAL_TYPES.has(String(error.type))) return classified("vision_unsupported");
    return classified(llamaCode);
  }
  const effective = status ?? (typeof error.code === "number" ? error.code : undefined);
  if (hasImage && (effective === 400 || effective === 415 || effective === 500 || effective === 501)) {
    return classified("vision_unsupported");
  }
  return classified(fromStatus(effective));
}

/**
 * A code with no cause of its own, or an answer with neither a code nor llama-server's type, by its
 * status: a 400 or 413 is this request's fault, anything else the server's (which the client may
 * retry on the baseline route).
 */
function fromStatus(status: unknown): ErrorCode {
  if (status === 401) return "session_expired";
  if (status === 429) return "rate_limited";
  if (status === 503) return "model_loading";
  if (status === 400 || status === 413) return "bad_request";
  return "server_error";
}
