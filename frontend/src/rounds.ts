/**
 * One round: negotiate, try the direct lane, fall back to the baseline, and reconnect or wait for a
 * loading model. The design's point of no return decides: before the first delta any failure falls
 * back silently, once; after it, only a resumable stream goes on.
 */
import { type Classified, classified, classifyServerError } from "./errors.ts";
import type { UIEvent } from "./shape.ts";
import { parseErrorBody } from "./sse.ts";
import { type ChatRun, DEFAULTS, type DirectGrant, discard, isEventStream, LaneRequest, retryAfterMs } from "./chat-run.ts";
import { abortStream, type BodyOutcome, errorEvent, type RoundOutcome, streamBody } from "./stream-body.ts";
import { LANE_ROUTES, UNUSED_GRANT_HEADER } from "./lanes.ts";

/** Shown while the client waits for the model on its own; the error's wording asks the user to retry. */
const LOADING_NOTICE: UIEvent = {
  type: "notice",
  code: "model_loading",
  message: "The model is still loading; the reply starts as soon as it is ready.",
};

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
  if (grant.conversationId !== null) {
    headers["X-Conversation-Id"] = grant.conversationId;
    run.options.onConversation?.(grant.conversationId);
  }
  let response: Response;
  try {
    response = await run.fetch(`${grant.url}${LANE_ROUTES[run.route].path}`, {
      method: LANE_ROUTES[run.route].method,
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
  // 409: the model is not loaded and this grant may not load it; the baseline would not serve it either.
  if (response.status === 400 || response.status === 409 || response.status === 413 || response.status === 429) {
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

/** The baseline serves the model the body names: the one picked, as the lane's grant does. */
function fallbackBody(run: ChatRun, body: Record<string, unknown>): Record<string, unknown> {
  const model = run.options.model;
  return model !== undefined && body.model === undefined ? { ...body, model } : body;
}

/** A run that may not load a model asks the baseline the same (`?autoload=false`: 409 if not loaded). */
function fallbackTarget(run: ChatRun, url: string): string {
  if (run.options.autoload !== false) return url;
  return `${url}${url.includes("?") ? "&" : "?"}autoload=false`;
}

/**
 * The baseline's answer. A 429 waits its Retry-After once, as a negotiation does: the user's stream may
 * be held by the lane request just given up, which the gate reached and will report within a second.
 */
async function postBaseline(
  run: ChatRun,
  url: string,
  body: Record<string, unknown>,
  signal: AbortSignal,
  headers: Record<string, string>,
): Promise<Response> {
  const response = await run.postJson(url, body, signal, headers);
  if (response.status !== 429) return response;
  const wait = retryAfterMs(response, run.options.maxRetryAfterMs ?? DEFAULTS.maxRetryAfterMs);
  await discard(response);
  await run.sleep(wait, signal);
  return run.postJson(url, body, signal, headers);
}

/**
 * The broker's baseline, same body, same SSE; `unreachable` lets the round reconnect. `unusedToken`: the
 * lane grant this round could not use, which the baseline serves under rather than reserve another (a
 * user at their stream limit would be refused for the grant they just gave up).
 */
async function* fallbackRound(
  run: ChatRun,
  url: string,
  body: Record<string, unknown>,
  unusedToken: string | undefined,
): AsyncGenerator<UIEvent, RoundOutcome | NotYet> {
  const request = new LaneRequest(run.signal, null);
  const headers: Record<string, string> = unusedToken === undefined ? {} : { [UNUSED_GRANT_HEADER]: unusedToken };
  let response: Response;
  try {
    response = await postBaseline(run, url, body, request.controller.signal, headers);
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

/** What the negotiation asks for: the route (chat, the default, is not named), the cap, the model. */
function askFor(run: ChatRun, body: Record<string, unknown>): Record<string, unknown> {
  const cap = body[LANE_ROUTES[run.route].lengthCap];
  const maxTokens = run.options.maxTokens ?? (typeof cap === "number" ? cap : undefined);
  const ask: Record<string, unknown> = run.route === "chat" ? {} : { route: run.route };
  if (maxTokens !== undefined) ask.max_tokens = maxTokens;
  if (run.options.resumable) ask.resumable = true;
  if (run.options.model !== undefined) ask.model = run.options.model;
  if (run.options.autoload === false) ask.autoload = false;
  return ask;
}

export async function* round(run: ChatRun, body: Record<string, unknown>): AsyncGenerator<UIEvent, RoundOutcome> {
  const ask = askFor(run, body);
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
    // The broker says the gate is (re)starting llama-server: until it listens, the baseline's 502 is this wait.
    const serverLoading = answer.kind === "fallback" && answer.reason === "model_loading";
    if (serverLoading) yield LOADING_NOTICE;
    let unusedToken: string | undefined;
    // A grant for another route would be refused on this one ("": a broker that names none).
    if (answer.kind === "grant" && (answer.route === "" || answer.route === run.route)) {
      const outcome = yield* directRound(run, answer.grant, body);
      if (outcome.kind !== "fallback") return outcome;
      unusedToken = answer.grant.token;
    }
    const fallbackUrl = answer.fallbackUrl ?? run.options.fallbackUrl ?? LANE_ROUTES[run.route].path.slice(1);
    const outcome = yield* fallbackRound(run, fallbackTarget(run, fallbackUrl), fallbackBody(run, body), unusedToken);
    if (outcome.kind === "end" || outcome.kind === "stopped") return outcome;
    const loading = outcome.kind === "loading" || serverLoading;
    const delay = loading ? loadingDelays[loadingWaits++] : delays[reconnects++];
    if (delay === undefined) {
      const error = serverLoading ? classified("model_loading") : outcome.error ?? classified("connection_lost");
      yield errorEvent(error, "pre-output");
      return { kind: "stopped" };
    }
    yield loading ? LOADING_NOTICE : { type: "notice", code: "reconnecting", message: "Reconnecting…" };
    await run.sleep(delay, run.signal);
  }
}
