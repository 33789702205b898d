/** The public shapes `streamChat` (and `streamResponses`, `streamMessages`) take: the request, the options and the tool executors. */
export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface ChatMessage {
  role: string;
  content?: unknown;
  [field: string]: unknown;
}

export interface ChatRequest {
  messages: ChatMessage[];
  max_tokens?: number;
  [field: string]: unknown;
}

/** An OpenAI Responses request (`POST /v1/responses`): `input` is a string or a list of items. */
export interface ResponsesRequest {
  input: string | Record<string, unknown>[];
  max_output_tokens?: number;
  [field: string]: unknown;
}

/** An Anthropic Messages request (`POST /v1/messages`); `max_tokens` is the format's own, required. */
export interface MessagesRequest {
  messages: ChatMessage[];
  max_tokens: number;
  [field: string]: unknown;
}

export interface ToolContext {
  signal: AbortSignal;
}

/** `args` is whatever JSON the model wrote, so each executor checks its own shape. */
export type ToolExecutor = (args: unknown, context: ToolContext) => unknown;

export interface StreamChatOptions {
  /** Injected for tests; defaults to the global `fetch`. */
  fetch?: FetchLike;
  /** Negotiation path, relative so that a reverse proxy's path prefix survives. */
  negotiateUrl?: string;
  /** Baseline path when the negotiation did not name one; defaults to the route's own path, relative. */
  fallbackUrl?: string;
  signal?: AbortSignal;
  /** How long the lane may take to answer with a response head (not the first token). */
  headTimeoutMs?: number;
  /** Ask for a resumable stream (`X-Conversation-Id`), so a broken connection can resume. */
  resumable?: boolean;
  /** Told each resumable stream's conversation id as its request goes out: a page that keeps it can
   * pick the stream up again after a reload (`resumeChat`). */
  onConversation?: (conversationId: string) => void;
  /** The model to negotiate for (the broker's `GET /v1/models` names them); the server's default if unset. */
  model?: string;
  /** `false`: the request may not load a model that is not loaded (409 `model_not_loaded` then). */
  autoload?: boolean;
  /** The generation cap to ask the broker for; defaults to the request's own (`max_tokens`, or a Responses
   * request's `max_output_tokens`). */
  maxTokens?: number;
  tools?: Record<string, ToolExecutor>;
  /** Tool rounds before the loop stops: each round runs the tools and asks the model again. */
  maxToolRounds?: number;
  /** How many times one stream may resume after its connection broke. */
  maxResumes?: number;
  /** Back-off before each renegotiation while both lanes are unreachable (a gate restarting). */
  reconnectDelaysMs?: number[];
  /** Waits before asking again while the model is still loading (both lanes answer 503). */
  loadingDelaysMs?: number[];
  /** The longest wait a 429's `Retry-After` may impose before the one retry. */
  maxRetryAfterMs?: number;
  prefilledThink?: boolean;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}
