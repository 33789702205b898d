/**
 * One response body, streamed to its end: decode, shape, and resume a resumable direct stream whose
 * connection broke after its first delta. Text is never shown twice: the shaper and the byte count
 * survive the resume.
 */
import type { Classified, ErrorCode } from "./errors.ts";
import type { Lane, ShapedEvent, ToolCall, UIEvent } from "./shape.ts";
import { createShaper, type Shaper } from "./shape-format.ts";
import { createSSEDecoder, interpretEvent, type SSEDecoder } from "./sse.ts";
import { type ChatRun, DEFAULTS, type DirectGrant, discard, isEventStream, LaneRequest } from "./chat-run.ts";
import { LANE_ROUTES } from "./lanes.ts";

/** How one request (one round) ended. `stopped`: an error or an abort was already emitted. */
export type RoundOutcome =
  | { kind: "end"; finishReason: string | null; calls: ToolCall[]; text: string; lane: Lane }
  | { kind: "stopped" };

/** How one response body ended, before the round decides what to do about it. */
export type BodyOutcome = RoundOutcome | { kind: "fallback" };

/** Error codes on which a lane that has shown nothing yet is abandoned for the baseline. */
const FALLBACK_CODES: ReadonlySet<ErrorCode> = new Set(["server_error", "model_loading", "bad_response"]);

/** One error event, friendly by construction. */
export function errorEvent(error: Classified, phase: "pre-output" | "mid-stream"): UIEvent {
  return { type: "error", message: error.message, code: error.code, phase };
}

/** The per-stream state that survives a resume: one decoder, one shaper, one byte count. */
class StreamState {
  readonly decoder: SSEDecoder = createSSEDecoder();
  readonly shaper: Shaper;
  received = 0;
  text = "";
  calls: ToolCall[] = [];

  constructor(run: ChatRun) {
    this.shaper = createShaper(run.route, {
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

export async function* abortStream(run: ChatRun, grant: DirectGrant | null): AsyncGenerator<UIEvent, RoundOutcome> {
  if (grant?.conversationId) await run.cancelConversation(grant.conversationId);
  yield { type: "abort" };
  return { kind: "stopped" };
}

/** Open the resumed tail: negotiate a resume-scoped token, then `GET /v1/stream?from=N`. */
export async function openResume(run: ChatRun, conversationId: string, from: number): Promise<LaneResponse | null> {
  const answer = await run.negotiate({ resume: conversationId });
  if (answer.kind !== "grant") return null;
  const target = `${answer.grant.url}${LANE_ROUTES.resume.path}?conv_id=${encodeURIComponent(conversationId)}&from=${from}`;
  const request = new LaneRequest(run.signal, run.headTimeoutMs);
  try {
    const response = await run.fetch(target, {
      method: LANE_ROUTES.resume.method,
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

export interface LaneResponse {
  request: LaneRequest;
  response: Response;
}

/**
 * Stream one response to its end, resuming a resumable direct stream whose connection broke after
 * its first delta. `grant` is null on the baseline, which cannot resume.
 */
export async function* streamBody(
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
