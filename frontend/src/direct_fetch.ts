/**
 * `directFetch`: a `fetch` for an unchanged SDK (the OpenAI JS SDK's `fetch` option) on a page of the
 * app's own origin, so that one client object holds a whole conversation through the direct lane.
 *
 * A lane token is single use, so a client built on one grant fails on its second call. This wrapper
 * negotiates a fresh grant, with the page's session cookie, for every `POST …/v1/chat/completions`
 * (and so for every SDK retry), and sends the SDK's request to the grant's lane with the grant's
 * token. Before the first byte it falls back to the baseline (cookie auth, no `Authorization`), as
 * `streamChat` does: when the negotiation answers unsupported, or the lane is unreachable, answers
 * 401, 403 or 5xx, or sends no response head in time. A refused negotiation (401, 429, an unknown
 * model) is handed to the SDK as the response, so that it raises its own typed error. Other routes
 * (`/v1/models`) go to the app with the cookie. The response body is never read here: a stream
 * reaches the SDK chunk by chunk.
 */
import type { FetchLike } from "./chat-types.ts";
import { LANE_ROUTES } from "./lanes.ts";
import { parseNegotiation } from "./negotiation.ts";

export interface DirectFetchOptions {
  /** Injected for tests; defaults to the global `fetch`. */
  fetch?: FetchLike;
  /** Negotiation path, relative so that a reverse proxy's path prefix survives. */
  negotiateUrl?: string;
  /** Baseline path when the negotiation did not name one. */
  fallbackUrl?: string;
  /** How long the lane may take to answer with a response head (not the first token). */
  headTimeoutMs?: number;
}

/** What the SDK calls: `fetch(url, init)`, with `url` a string, a URL or a Request. */
export type DirectFetch = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

const CHAT = LANE_ROUTES.chat;
/** The baseline is the same route off the lane, relative so that a reverse proxy's prefix survives. */
const DEFAULTS = { negotiateUrl: "direct-stream", fallbackUrl: CHAT.path.slice(1), headTimeoutMs: 10_000 };
/** Headers of the SDK's request that never travel on: the auth is the wrapper's. */
const DROPPED = ["authorization", "cookie", "x-conversation-id"];

interface Grant {
  url: string;
  token: string;
  conversationId: string | null;
}

type Negotiated = { kind: "grant"; grant: Grant; fallbackUrl?: string } | { kind: "fallback"; fallbackUrl?: string };

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function pageUrl(): string | undefined {
  return (globalThis as { location?: { href?: string } }).location?.href;
}

/** The SDK's headers without the ones the wrapper owns. */
function ownHeaders(init: RequestInit | undefined): Headers {
  const headers = new Headers(init?.headers);
  for (const name of DROPPED) headers.delete(name);
  return headers;
}

async function discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // The body is being thrown away; a failure to close it changes nothing.
  }
}

function modelOf(body: BodyInit | null | undefined): string | undefined {
  if (typeof body !== "string") return undefined;
  try {
    const value: unknown = JSON.parse(body);
    return isRecord(value) && typeof value.model === "string" && value.model !== "" ? value.model : undefined;
  } catch {
    return undefined;
  }
}

export function directFetch(options: DirectFetchOptions = {}): DirectFetch {
  const fetch: FetchLike = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const negotiateUrl = options.negotiateUrl ?? DEFAULTS.negotiateUrl;
  const headTimeoutMs = options.headTimeoutMs ?? DEFAULTS.headTimeoutMs;

  const toApp = (url: string, init: RequestInit | undefined): Promise<Response> =>
    fetch(url, { ...init, headers: ownHeaders(init), credentials: "same-origin" });

  /** Returns the negotiation's own response when it was refused: the SDK reports that itself. */
  async function negotiate(init: RequestInit | undefined): Promise<Negotiated | Response> {
    const model = modelOf(init?.body);
    let response: Response;
    try {
      response = await fetch(negotiateUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(model === undefined ? {} : { model }),
        signal: init?.signal ?? null,
      });
    } catch (error) {
      if (init?.signal?.aborted) throw error;
      return { kind: "fallback" };
    }
    if (response.status !== 200) return response;
    let answer: unknown;
    try {
      answer = await response.json();
    } catch (error) {
      if (init?.signal?.aborted) throw error;
      return { kind: "fallback" };
    }
    const parsed = parseNegotiation(answer);
    if (parsed === null) return { kind: "fallback" };
    const fallbackUrl = parsed.fallback_url || undefined;
    if (parsed.supported) {
      return { kind: "grant", grant: { url: parsed.url, token: parsed.token, conversationId: parsed.conversation_id }, fallbackUrl };
    }
    return { kind: "fallback", fallbackUrl };
  }

  /** The lane's response, or null for a failure before its head that the baseline should mend. */
  async function lane(grant: Grant, init: RequestInit | undefined): Promise<Response | null> {
    const controller = new AbortController();
    const userSignal = init?.signal;
    const follow = (): void => controller.abort(userSignal?.reason);
    if (userSignal?.aborted) follow();
    userSignal?.addEventListener("abort", follow, { once: true });
    const timer = setTimeout(() => controller.abort(), headTimeoutMs);
    const headers = ownHeaders(init);
    headers.set("Authorization", `Bearer ${grant.token}`);
    if (grant.conversationId !== null) headers.set("X-Conversation-Id", grant.conversationId);
    try {
      const response = await fetch(`${grant.url}${CHAT.path}`, {
        ...init,
        headers,
        credentials: "omit",
        signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403 || response.status >= 500) {
        await discard(response);
        return null;
      }
      return response;
    } catch (error) {
      if (userSignal?.aborted) throw error;
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  return async (input, init) => {
    if (input instanceof Request) throw new TypeError("directFetch takes a URL and init, as the OpenAI SDK passes them");
    const url = new URL(String(input), pageUrl());
    const method = (init?.method ?? "GET").toUpperCase();
    if (method !== CHAT.method || !url.pathname.endsWith(CHAT.path)) return toApp(url.href, init);
    const negotiated = await negotiate(init);
    if (negotiated instanceof Response) return negotiated;
    if (negotiated.kind === "grant") {
      const response = await lane(negotiated.grant, init);
      if (response !== null) return response;
    }
    return toApp(negotiated.fallbackUrl ?? options.fallbackUrl ?? DEFAULTS.fallbackUrl, init);
  };
}
