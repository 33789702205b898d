/**
 * One chat run's link to the broker and the lane: negotiation (with its 429 wait), the lane request
 * with its head deadline, and the best-effort cancel of a resumable stream. The only door to the
 * network is `options.fetch`.
 */
import { classified, type Classified, classifyServerError } from "./errors.ts";
import { parseErrorBody } from "./sse.ts";
import type { FetchLike, StreamChatOptions } from "./chat-types.ts";
import { LANE_ROUTES } from "./lanes.ts";
import { parseNegotiation } from "./negotiation.ts";
import type { StreamFormat } from "./shape-format.ts";

export interface DirectGrant {
  url: string;
  token: string;
  conversationId: string | null;
}

export type Negotiated =
  | { kind: "grant"; grant: DirectGrant; route: string; fallbackUrl: string | undefined }
  | { kind: "fallback"; reason: string | undefined; fallbackUrl: string | undefined }
  | { kind: "error"; error: Classified }
  | { kind: "abort" };

export const DEFAULTS = {
  negotiateUrl: "direct-stream",
  headTimeoutMs: 10_000,
  maxToolRounds: 5,
  maxResumes: 2,
  reconnectDelaysMs: [500, 1_000, 2_000],
  loadingDelaysMs: [1_000, 2_000, 4_000, 8_000, 15_000],
  maxRetryAfterMs: 10_000,
} as const;

/** Cleanup calls (cancel a resumable stream) must not hang a stopped page. */
const CLEANUP_TIMEOUT_MS = 5_000;

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

export function retryAfterMs(response: Response, cap: number): number {
  const header = response.headers.get("retry-after");
  const seconds = header !== null && /^\d+$/.test(header.trim()) ? Number(header.trim()) : 1;
  return Math.min(seconds * 1_000, cap);
}

export function isEventStream(response: Response): boolean {
  return (response.headers.get("content-type") ?? "").toLowerCase().includes("text/event-stream");
}

export async function discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // The body is being thrown away; a failure to close it changes nothing.
  }
}

/** A fetch whose controller follows the caller's signal, with a deadline on the response head. */
export class LaneRequest {
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

export class ChatRun {
  readonly fetch: FetchLike;
  readonly signal: AbortSignal;
  readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;

  /** `route`: the lane route each round streams from, which is also its stream's format. */
  constructor(
    readonly options: StreamChatOptions,
    readonly hasImage: boolean,
    readonly route: StreamFormat = "chat",
  ) {
    this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.signal = options.signal ?? new AbortController().signal;
    this.sleep = options.sleep ?? defaultSleep;
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
        response = await this.postJson(url, body, signal);
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
      if (response.status === 429) {
        // Its reason says which limit (rate_limited, too_many_streams, budget_exhausted); none: a rate limit.
        return { kind: "error", error: classifyServerError(429, parseErrorBody(await response.text()), false) };
      }
      if (response.status === 401) return { kind: "error", error: classified("session_expired") };
      if (response.status === 400) {
        // A model this user may not use: the baseline must not answer with another model instead.
        const error = classifyServerError(400, parseErrorBody(await response.text()), false);
        if (error.code === "unknown_model") return { kind: "error", error };
        return { kind: "fallback", reason: "negotiation_failed", fallbackUrl: undefined };
      }
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
      const parsed = parseNegotiation(answer);
      if (parsed === null) return { kind: "fallback", reason: "negotiation_failed", fallbackUrl: undefined };
      const fallbackUrl = parsed.fallback_url || undefined;
      if (parsed.supported) {
        return {
          kind: "grant",
          grant: { url: parsed.url, token: parsed.token, conversationId: parsed.conversation_id },
          route: parsed.route,
          fallbackUrl,
        };
      }
      return { kind: "fallback", reason: parsed.reason || undefined, fallbackUrl };
    }
  }

  /** A same-origin JSON POST with the page's session cookie: the negotiation and the baseline. */
  postJson(url: string, body: Record<string, unknown>, signal: AbortSignal, headers: Record<string, string> = {}): Promise<Response> {
    return this.fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", ...headers },
      body: JSON.stringify(body),
      signal,
    });
  }

  /**
   * Free a resumable stream's slot: it outlives its connection by design, so closing the fetch is
   * not enough. Best effort, bounded in time, never under the (already aborted) user signal.
   */
  async cancelConversation(conversationId: string): Promise<void> {
    const signal = AbortSignal.timeout(CLEANUP_TIMEOUT_MS);
    const answer = await this.negotiate({ cancel: conversationId }, signal);
    if (answer.kind !== "grant") return;
    const target = `${answer.grant.url}${LANE_ROUTES.cancel.path}?conv_id=${encodeURIComponent(conversationId)}`;
    try {
      const response = await this.fetch(target, {
        method: LANE_ROUTES.cancel.method,
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
