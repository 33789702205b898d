/**
 * `streamChat`: negotiate a token, stream straight from the lane, shape, fall back, resume, run tools.
 *
 * The only door to the network is `options.fetch`, so every path here (fallback on each failure
 * kind, resume, abort, the tool loop) runs in unit tests against a scripted fake. The rule that
 * decides most branches is the design's point of no return: before the first emitted text or
 * reasoning delta any failure falls back silently, once; after it, a resumable stream resumes from
 * its byte offset and any other stream fails visibly. Text is never shown twice.
 */
import { classified, classifyServerError, type Classified, type ErrorCode } from "./errors.ts";
import { type Lane, type ShapedEvent, StreamShaper, type ToolCall, type UIEvent } from "./shape.ts";
import { createSSEDecoder, interpretEvent, parseErrorBody, type SSEDecoder } from "./sse.ts";

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
  /** Baseline path when the negotiation did not name one. */
  fallbackUrl?: string;
  signal?: AbortSignal;
  /** How long the lane may take to answer with a response head (not the first token). */
  headTimeoutMs?: number;
  /** Ask for a resumable stream (`X-Conversation-Id`), so a broken connection can resume. */
  resumable?: boolean;
  /** The generation cap to ask the broker for; defaults to `request.max_tokens`. */
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

interface DirectGrant {
  url: string;
  token: string;
  conversationId: string | null;
}

type Negotiated =
  | { kind: "grant"; grant: DirectGrant; fallbackUrl: string | undefined }
  | { kind: "fallback"; reason: string | undefined; fallbackUrl: string | undefined }
  | { kind: "error"; error: Classified }
  | { kind: "abort" };

/** How one request (one round) ended. `stopped`: an error or an abort was already emitted. */
type RoundOutcome =
  | { kind: "end"; finishReason: string | null; calls: ToolCall[]; text: string; lane: Lane }
  | { kind: "stopped" };

/** How one response body ended, before the round decides what to do about it. */
type BodyOutcome = RoundOutcome | { kind: "fallback" };

const DEFAULTS = {
  negotiateUrl: "direct-stream",
  fallbackUrl: "v1/chat/completions",
  headTimeoutMs: 10_000,
  maxToolRounds: 5,
  maxResumes: 2,
  reconnectDelaysMs: [500, 1_000, 2_000],
  loadingDelaysMs: [1_000, 2_000, 4_000, 8_000, 15_000],
  maxRetryAfterMs: 10_000,
} as const;

/** Shown while the client waits for the model on its own; the error's wording asks the user to retry. */
const LOADING_NOTICE: UIEvent = {
  type: "notice",
  code: "model_loading",
  message: "The model is still loading; the reply starts as soon as it is ready.",
};

/** Cleanup calls (cancel a resumable stream) must not hang a stopped page. */
const CLEANUP_TIMEOUT_MS = 5_000;

/** Error codes on which a lane that has shown nothing yet is abandoned for the baseline. */
const FALLBACK_CODES: ReadonlySet<ErrorCode> = new Set(["server_error", "model_loading", "bad_response"]);

function defaultSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function requestHasImage(messages: ChatMessage[]): boolean {
  return messages.some(
    (message) =>
      Array.isArray(message.content) &&
      message.content.some((part: unknown) => isRecord(part) && part.type === "image_url"),
  );
}

function retryAfterMs(response: Response, cap: number): number {
  const header = response.headers.get("retry-after");
  const seconds = header !== null && /^\d+$/.test(header.trim()) ? Number(header.trim()) : 1;
  return Math.min(seconds * 1_000, cap);
}

function isEventStream(response: Response): boolean {
  return (response.headers.get("content-type") ?? "").toLowerCase().includes("text/event-stream");
}

async function discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // The body is being thrown away; a failure to close it changes nothing.
  }
}

/** One error event, friendly by construction. */
function errorEvent(error: Classified, phase: "pre-output" | "mid-stream"): UIEvent {
  return { type: "error", message: error.message, code: error.code, phase };
}

/** A fetch whose controller follows the caller's signal, with a deadline on the response head. */
class LaneRequest {
  readonly controller = new AbortController();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly unlink: () => void;

  /** `headTimeoutMs` null: no deadline (the baseline, whose head waits on the broker's own relay). */
  constructor(
    userSignal: AbortSignal,
    headTimeoutMs: number | null,
  ) {
    const follow = (): void => this.controller.abort();
    if (userSignal.aborted) follow();
    userSignal.addEventListener("abort", follow, { once: true });
    this.unlink = () => userSignal.removeEventListener("abort", follow);
    if (headTimeoutMs !== null) {
      this.timer = setTimeout(() => this.controller.abort(), headTimeoutMs);
    }
  }

  headArrived(): void {
    clearTimeout(this.timer);
  }

  /** Close the connection: the gate propagates it, so llama-server frees the slot. */
  cancel(): void {
    clearTimeout(this.timer);
    this.controller.abort();
    this.unlink();
  }
}

class ChatRun {
  readonly fetch: FetchLike;
  readonly signal: AbortSignal;
  readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  readonly hasImage: boolean;

  constructor(
    readonly options: StreamChatOptions,
    request: ChatRequest,
  ) {
    this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.signal = options.signal ?? new AbortController().signal;
    this.sleep = options.sleep ?? defaultSleep;
    this.hasImage = requestHasImage(request.messages);
  }

  get headTimeoutMs(): number {
    return this.options.headTimeoutMs ?? DEFAULTS.headTimeoutMs;
  }

  /**
   * `POST direct-stream` with the page's session cookie. A 429 waits its Retry-After once; a 401
   * means the session expired, which no fallback can mend (the baseline needs the same session).
   */
  async negotiate(body: Record<string, unknown>, signal: AbortSignal = this.signal): Promise<Negotiated> {
    const url = this.options.negotiateUrl ?? DEFAULTS.negotiateUrl;
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        response = await this.fetch(url, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body),
          signal,
        });
      } catch {
        if (signal.aborted) return { kind: "abort" };
        return { kind: "fallback", reason: "unreachable", fallbackUrl: undefined };
      }
      if (response.status === 429 && attempt === 0) {
        const wait = retryAfterMs(response, this.options.maxRetryAfterMs ?? DEFAULTS.maxRetryAfterMs);
        await discard(response);
        await this.sleep(wait, signal);
        if (signal.aborted) return { kind: "abort" };
        continue;
      }
      if (response.status === 429) return { kind: "error", error: classified("rate_limited") };
      if (response.status === 401) return { kind: "error", error: classified("session_expired") };
      if (!response.ok) {
        await discard(response);
        return { kind: "fallback", reason: "negotiation_failed", fallbackUrl: undefined };
      }
      let answer: unknown;
      try {
        answer = await response.json();
      } catch {
        if (signal.aborted) return { kind: "abort" };
        return { kind: "fallback", reason: "negotiation_failed", fallbackUrl: undefined };
      }
      if (!isRecord(answer)) return { kind: "fallback", reason: "negotiation_failed", fallbackUrl: undefined };
      const fallbackUrl = typeof answer.fallback_url === "string" ? answer.fallback_url : undefined;
      if (answer.supported === true && typeof answer.url === "string" && typeof answer.token === "string") {
        const conversationId = typeof answer.conversation_id === "string" ? answer.conversation_id : null;
        return {
          kind: "grant",
          grant: { url: answer.url.replace(/\/+$/, ""), token: answer.token, conversationId },
          fallbackUrl,
        };
      }
      const reason = typeof answer.reason === "string" ? answer.reason : undefined;
      return { kind: "fallback", reason, fallbackUrl };
    }
  }

  /**
   * Free a resumable stream's slot: it outlives its connection by design, so closing the fetch is
   * not enough. Best effort, bounded in time, never under the (already aborted) user signal.
   */
  async cancelConversation(conversationId: string): Promise<void> {
    const signal = AbortSignal.timeout(CLEANUP_TIMEOUT_MS);
    const answer = await this.negotiate({ cancel: conversationId }, signal);
    if (answer.kind !== "grant") return;
    const target = `${answer.grant.url}/v1/stream?conv_id=${encodeURIComponent(conversationId)}`;
    try {
      const response = await this.fetch(target, {
        method: "DELETE",
        credentials: "omit",
        headers: { Authorization: `Bearer ${answer.grant.token}` },
        signal,
      });
      await discard(response);
    } catch {
      // The stream may already be gone; its own end frees the slot as well.
    }
  }
}

/** The per-stream state that survives a resume: one decoder, one shaper, one byte count. */
class StreamState {
  readonly decoder: SSEDecoder = createSSEDecoder();
  readonly shaper: StreamShaper;
  received = 0;
  text = "";
  calls: ToolCall[] = [];

  constructor(run: ChatRun) {
    this.shaper = new StreamShaper({
      prefilledThink: run.options.prefilledThink ?? false,
      hasImage: run.hasImage,
    });
  }
}

type Step =
  | { kind: "event"; event: UIEvent }
  | { kind: "none" }
  | { kind: "end"; finishReason: string | null }
  | { kind: "fallback" }
  | { kind: "failed" };

/** Turn one shaped event into what the round does with it. */
function step(state: StreamState, event: ShapedEvent, lane: Lane): Step {
  switch (event.type) {
    case "tool_calls":
      state.calls = event.calls;
      return { kind: "none" };
    case "end":
      return { kind: "end", finishReason: event.finish_reason };
    case "error":
      if (lane === "direct" && event.phase === "pre-output" && FALLBACK_CODES.has(event.code)) {
        return { kind: "fallback" };
      }
      if (event.code === "bad_tool_arguments") return { kind: "event", event };
      return { kind: "failed" };
    case "text_delta":
      state.text += event.text;
      return { kind: "event", event };
    default:
      return { kind: "event", event };
  }
}

/**
 * Read one response body into the stream state, yielding UI events. Returns why it stopped: `{end}`
 * (`[DONE]` or a finish), `complete` (the body ended after a finish_reason), `eof` (it ended early),
 * `broken` (a read failed, an abort included), `fallback` or `failed` (an error was shown).
 */
async function* pump(
  state: StreamState,
  response: Response,
  lane: Lane,
): AsyncGenerator<UIEvent, "complete" | "eof" | "broken" | "fallback" | "failed" | { end: string | null }> {
  const body = response.body;
  if (body === null) return "eof";
  const reader = body.getReader();
  const handle = function* (shaped: ShapedEvent[]): Generator<UIEvent, Step | undefined> {
    for (const event of shaped) {
      const next = step(state, event, lane);
      if (next.kind === "none") continue;
      if (next.kind === "event") {
        yield next.event;
      } else if (next.kind === "failed") {
        if (event.type === "error") yield event;
        return next;
      } else {
        return next;
      }
    }
    return undefined;
  };
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      state.received += value.byteLength;
      for (const sse of state.decoder.push(value)) {
        const stop = yield* handle(state.shaper.push(interpretEvent(sse)));
        if (stop?.kind === "end") return { end: stop.finishReason };
        if (stop !== undefined) return stop.kind === "fallback" ? "fallback" : "failed";
      }
      if (state.decoder.overflowed) {
        const stop = yield* handle(state.shaper.push({ kind: "malformed" }));
        return stop?.kind === "fallback" ? "fallback" : "failed";
      }
    }
  } catch {
    return "broken";
  } finally {
    reader.releaseLock();
  }
  return state.shaper.complete ? "complete" : "eof";
}

/** Drain the decoder and shaper at a real end of stream. */
function* finishStream(state: StreamState, lane: Lane): Generator<UIEvent, RoundOutcome> {
  const shaped: ShapedEvent[] = [];
  for (const sse of state.decoder.end()) shaped.push(...state.shaper.push(interpretEvent(sse)));
  shaped.push(...state.shaper.end());
  for (const event of shaped) {
    const next = step(state, event, "fallback");
    if (next.kind === "none") continue;
    if (next.kind === "event") {
      yield next.event;
    } else if (next.kind === "end") {
      return { kind: "end", finishReason: next.finishReason, calls: state.calls, text: state.text, lane };
    } else {
      if (event.type === "error") yield event;
      return { kind: "stopped" };
    }
  }
  return { kind: "stopped" };
}

async function* abortStream(run: ChatRun, grant: DirectGrant | null): AsyncGenerator<UIEvent, RoundOutcome> {
  if (grant?.conversationId) await run.cancelConversation(grant.conversationId);
  yield { type: "abort" };
  return { kind: "stopped" };
}

/** Open the resumed tail: negotiate a resume-scoped token, then `GET /v1/stream?from=N`. */
async function openResume(run: ChatRun, conversationId: string, from: number): Promise<LaneResponse | null> {
  const answer = await run.negotiate({ resume: conversationId });
  if (answer.kind !== "grant") return null;
  const target = `${answer.grant.url}/v1/stream?conv_id=${encodeURIComponent(conversationId)}&from=${from}`;
  const request = new LaneRequest(run.signal, run.headTimeoutMs);
  try {
    const response = await run.fetch(target, {
      method: "GET",
      credentials: "omit",
      headers: { Authorization: `Bearer ${answer.grant.token}` },
      signal: request.controller.signal,
    });
    request.headArrived();
    if (!response.ok || !isEventStream(response)) {
      await discard(response);
      request.cancel();
      return null;
    }
    return { request, response };
  } catch {
    request.cancel();
    return null;
  }
}

interface LaneResponse {
  request: LaneRequest;
  response: Response;
}

/**
 * Stream one response to its end, resuming a resumable direct stream whose connection broke after
 * its first delta. `grant` is null on the baseline, which cannot resume.
 */
async function* streamBody(
  run: ChatRun,
  first: LaneResponse,
  grant: DirectGrant | null,
  startLane: Lane,
): AsyncGenerator<UIEvent, BodyOutcome> {
  const state = new StreamState(run);
  let lane = startLane;
  let current = first;
  let resumes = 0;
  try {
    for (;;) {
      const result = yield* pump(state, current.response, lane);
      current.request.cancel();
      if (run.signal.aborted) return yield* abortStream(run, grant);
      if (typeof result === "object") {
        return { kind: "end", finishReason: result.end, calls: state.calls, text: state.text, lane };
      }
      if (result === "complete") return yield* finishStream(state, lane);
      if (result === "failed") return { kind: "stopped" };
      if (result === "fallback" || (lane === "direct" && !state.shaper.emittedDelta)) {
        if (grant?.conversationId) await run.cancelConversation(grant.conversationId);
        return { kind: "fallback" };
      }
      const conversationId = grant?.conversationId;
      let resumed: LaneResponse | null = null;
      while (conversationId && resumed === null && resumes < (run.options.maxResumes ?? DEFAULTS.maxResumes)) {
        resumes += 1;
        resumed = await openResume(run, conversationId, state.received);
        if (run.signal.aborted) {
          resumed?.request.cancel();
          return yield* abortStream(run, grant);
        }
      }
      if (resumed === null) return yield* finishStream(state, lane);
      lane = "resumed";
      current = resumed;
    }
  } finally {
    // A consumer that stops iterating early must not leave the connection, and so a slot, open.
    current.request.cancel();
  }
}

/** The direct lane: fetch with the token; any failure before a response streams is a fallback. */
async function* directRound(
  run: ChatRun,
  grant: DirectGrant,
  body: Record<string, unknown>,
): AsyncGenerator<UIEvent, BodyOutcome> {
  const request = new LaneRequest(run.signal, run.headTimeoutMs);
  const headers: Record<string, string> = {
    "Content-Type": "application/json",
    Authorization: `Bearer ${grant.token}`,
  };
  if (grant.conversationId !== null) headers["X-Conversation-Id"] = grant.conversationId;
  let response: Response;
  try {
    response = await run.fetch(`${grant.url}/v1/chat/completions`, {
      method: "POST",
      credentials: "omit",
      headers,
      body: JSON.stringify(body),
      signal: request.controller.signal,
    });
  } catch {
    request.cancel();
    if (run.signal.aborted) return yield* abortStream(run, grant);
    if (grant.conversationId) await run.cancelConversation(grant.conversationId);
    return { kind: "fallback" };
  }
  request.headArrived();
  if (response.ok && isEventStream(response)) {
    return yield* streamBody(run, { request, response }, grant, "direct");
  }
  if (response.status === 400 || response.status === 413 || response.status === 429) {
    const error = classifyServerError(response.status, parseErrorBody(await response.text()), run.hasImage);
    request.cancel();
    yield errorEvent(error, "pre-output");
    return { kind: "stopped" };
  }
  await discard(response);
  request.cancel();
  if (grant.conversationId) await run.cancelConversation(grant.conversationId);
  return { kind: "fallback" };
}

/**
 * The baseline could not serve yet: `unreachable` (a restart: reconnect) or `loading` (the model is
 * still loading: wait for it). `error` is what to show if waiting never succeeds.
 */
interface NotYet {
  kind: "unreachable" | "loading";
  error?: Classified;
}

/** The broker's baseline, same body, same SSE; `unreachable` lets the round reconnect. */
async function* fallbackRound(
  run: ChatRun,
  url: string,
  body: Record<string, unknown>,
): AsyncGenerator<UIEvent, RoundOutcome | NotYet> {
  const request = new LaneRequest(run.signal, null);
  let response: Response;
  try {
    response = await run.fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: request.controller.signal,
    });
  } catch {
    request.cancel();
    if (run.signal.aborted) return yield* abortStream(run, null);
    return { kind: "unreachable" };
  }
  request.headArrived();
  if (response.ok && isEventStream(response)) {
    const outcome = yield* streamBody(run, { request, response }, null, "fallback");
    return outcome.kind === "fallback" ? { kind: "stopped" } : outcome;
  }
  const error = response.ok
    ? classified("bad_response")
    : classifyServerError(response.status, parseErrorBody(await response.text()), run.hasImage);
  request.cancel();
  // A 502 is the gate saying the app or the model server is gone for now: both come back on their
  // own (a restart, a respawn), so it reconnects like a refused connection, keeping this error for last.
  if (response.status === 502) return { kind: "unreachable", error };
  if (response.status === 503) return { kind: "loading", error };
  yield errorEvent(error, "pre-output");
  return { kind: "stopped" };
}

async function* round(run: ChatRun, body: Record<string, unknown>): AsyncGenerator<UIEvent, RoundOutcome> {
  const maxTokens = run.options.maxTokens ?? (typeof body.max_tokens === "number" ? body.max_tokens : undefined);
  const ask: Record<string, unknown> = {};
  if (maxTokens !== undefined) ask.max_tokens = maxTokens;
  if (run.options.resumable) ask.resumable = true;
  const delays = run.options.reconnectDelaysMs ?? DEFAULTS.reconnectDelaysMs;
  const loadingDelays = run.options.loadingDelaysMs ?? DEFAULTS.loadingDelaysMs;
  let reconnects = 0;
  let loadingWaits = 0;
  for (;;) {
    if (run.signal.aborted) return yield* abortStream(run, null);
    const answer = await run.negotiate(ask);
    if (answer.kind === "abort") return yield* abortStream(run, null);
    if (answer.kind === "error") {
      yield errorEvent(answer.error, "pre-output");
      return { kind: "stopped" };
    }
    if (answer.kind === "fallback" && answer.reason === "model_loading") yield LOADING_NOTICE;
    if (answer.kind === "grant") {
      const outcome = yield* directRound(run, answer.grant, body);
      if (outcome.kind !== "fallback") return outcome;
    }
    const fallbackUrl = answer.fallbackUrl ?? run.options.fallbackUrl ?? DEFAULTS.fallbackUrl;
    const outcome = yield* fallbackRound(run, fallbackUrl, body);
    if (outcome.kind === "end" || outcome.kind === "stopped") return outcome;
    const loading = outcome.kind === "loading";
    const delay = loading ? loadingDelays[loadingWaits++] : delays[reconnects++];
    if (delay === undefined) {
      yield errorEvent(outcome.error ?? classified("connection_lost"), "pre-output");
      return { kind: "stopped" };
    }
    yield loading ? LOADING_NOTICE : { type: "notice", code: "reconnecting", message: "Reconnecting…" };
    await run.sleep(delay, run.signal);
  }
}

function toolResultContent(result: unknown): string {
  if (typeof result === "string") return result;
  try {
    return JSON.stringify(result ?? null);
  } catch {
    return JSON.stringify({ error: "unserialisable_result" });
  }
}

async function runTool(run: ChatRun, call: ToolCall): Promise<unknown> {
  if (!call.valid) return { error: "invalid_arguments", message: "The arguments were not valid JSON." };
  const executor = run.options.tools?.[call.name];
  if (executor === undefined) return { error: "unknown_tool", message: `No tool is named ${call.name}.` };
  try {
    return await executor(call.arguments, { signal: run.signal });
  } catch {
    return { error: "tool_failed", message: `The tool ${call.name} failed.` };
  }
}

/**
 * Stream one chat reply as UI events, running tool rounds until the model answers in text.
 * Ends with exactly one of `finish`, `abort` or a final `error`.
 */
export async function* streamChat(request: ChatRequest, options: StreamChatOptions = {}): AsyncGenerator<UIEvent> {
  const run = new ChatRun(options, request);
  const messages: ChatMessage[] = [...request.messages];
  const maxRounds = options.maxToolRounds ?? DEFAULTS.maxToolRounds;
  for (let rounds = 0; ; rounds++) {
    const body: Record<string, unknown> = {
      ...request,
      messages,
      stream: true,
      return_progress: true,
      stream_options: { include_usage: true },
    };
    const outcome = yield* round(run, body);
    if (outcome.kind === "stopped") return;
    if (outcome.calls.length === 0) {
      yield { type: "finish", finish_reason: outcome.finishReason, lane: outcome.lane };
      return;
    }
    if (rounds >= maxRounds) {
      yield errorEvent(classified("tool_rounds_exceeded"), "mid-stream");
      yield { type: "finish", finish_reason: outcome.finishReason, lane: outcome.lane };
      return;
    }
    messages.push({
      role: "assistant",
      content: outcome.text === "" ? null : outcome.text,
      tool_calls: outcome.calls.map((call) => ({
        id: call.id,
        type: "function",
        function: { name: call.name, arguments: call.raw },
      })),
    });
    for (const call of outcome.calls) {
      yield { type: "tool_start", tool_name: call.name, tool_call_id: call.id, arguments: call.arguments };
      yield { type: "tool_status", content: `Calling: ${call.name}` };
      const result = await runTool(run, call);
      if (run.signal.aborted) {
        yield { type: "abort" };
        return;
      }
      yield { type: "tool_end", tool_name: call.name, tool_call_id: call.id, result };
      messages.push({ role: "tool", tool_call_id: call.id, content: toolResultContent(result) });
    }
    yield { type: "tool_status", content: "" };
  }
}
