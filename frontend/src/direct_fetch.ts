/**
 * `directFetch`: a `fetch` for an unchanged SDK (the OpenAI JS SDK's `fetch` option) on a page of the
 * app's own origin, so that one client object holds a whole conversation through the direct lane.
 *
 * A lane token is single use, so a client built on one grant fails on its second call. This wrapper
 * negotiates a fresh grant, with the page's session cookie, for every request to a lane route (and so
 * for every SDK retry), and sends the SDK's request to that route on the grant's lane with the grant's
 * token. The route is the registry entry (`lanes.ts`) whose method is the request's and whose path
 * ends the request's path: `POST …/v1/chat/completions` is `chat`, `POST …/v1/responses` is
 * `responses`, `POST …/v1/messages` is `messages`, and so on; the negotiation names it (`chat`, the
 * default, is not named), and its grant is good for that route only. Before the first byte it falls
 * back to the baseline's copy of the route (cookie auth, no `Authorization`), as `streamChat` does:
 * when the negotiation answers unsupported, or the lane is unreachable, answers 401, 403 or 5xx, or
 * sends no response head in time (then with the grant it could not use, `X-Unused-Grant`, which the
 * baseline serves under rather than reserve another). A refused negotiation (401, 429, an unknown
 * model) is handed to the SDK as the response, so that it raises its own typed error. Other routes
 * (`/v1/models`, and resume and cancel, which name a conversation no SDK holds) go to the app with the
 * cookie. The response body is never read here: a stream reaches the SDK chunk by chunk.
 */
import type { FetchLike } from "./chat-types.ts";
import { LANE_ROUTES, type LaneRouteName, UNUSED_GRANT_HEADER } from "./lanes.ts";
import { parseNegotiation } from "./negotiation.ts";

export interface DirectFetchOptions {
  /** Injected for tests; defaults to the global `fetch`. */
  fetch?: FetchLike;
  /** Negotiation path, relative so that a reverse proxy's path prefix survives. */
  negotiateUrl?: string;
  /** The chat route's baseline path when the negotiation did not name one (another route's is its own
   * path, relative to the page). */
  fallbackUrl?: string;
  /** How long the lane may take to answer with a response head (not the first token). */
  headTimeoutMs?: number;
}

/** What the SDK calls: `fetch(url, init)`, with `url` a string, a URL or a Request. */
export type DirectFetch = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

type LaneRoute = (typeof LANE_ROUTES)[LaneRouteName];
interface SdkRoute {
  name: LaneRouteName;
  route: LaneRoute;
}

/** The route a negotiation that names none is for. */
const DEFAULT_ROUTE: LaneRouteName = "chat";
/** The baseline is the same route off the lane, relative so that a reverse proxy's prefix survives. */
const DEFAULTS = { negotiateUrl: "direct-stream", headTimeoutMs: 10_000 };
/** Headers of the SDK's request that never travel on: the auth is the wrapper's (the Anthropic SDK's
 * key rides in `x-api-key`), and so is the grant it hands the baseline. */
const DROPPED = ["authorization", "x-api-key", "cookie", "x-conversation-id", UNUSED_GRANT_HEADER.toLowerCase()];

/** The routes an SDK sends: every lane route but resume and cancel, which name a conversation. */
const SDK_ROUTES: SdkRoute[] = (Object.keys(LANE_ROUTES) as LaneRouteName[])
  .map((name) => ({ name, route: LANE_ROUTES[name] as LaneRoute }))
  .filter(({ route }) => route.conversation !== "resumes" && route.conversation !== "stops");

/** The lane route a request is for: the one of its method whose path ends the request's path, the
 * longest if several do (`/v1/messages/count_tokens`, not `/v1/messages`); undefined: no lane route. */
function routeOf(method: string, pathname: string): SdkRoute | undefined {
  let found: SdkRoute | undefined;
  for (const candidate of SDK_ROUTES) {
    const { route } = candidate;
    if (route.method !== method || !pathname.endsWith(route.path)) continue;
    if (found === undefined || route.path.length > found.route.path.length) found = candidate;
  }
  return found;
}

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

/** Returns the negotiation's own response when it was refused: the SDK reports that itself. */
async function negotiate(
  fetch: FetchLike,
  negotiateUrl: string,
  sdk: SdkRoute,
  init: RequestInit | undefined,
): Promise<Negotiated | Response> {
  const model = modelOf(init?.body);
  const asked: { route?: string; model?: string } = sdk.name === DEFAULT_ROUTE ? {} : { route: sdk.name };
  if (model !== undefined) asked.model = model;
  let response: Response;
  try {
    response = await fetch(negotiateUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(asked),
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
  // A grant for another route would be refused on this one ("": a broker that names none).
  if (parsed.supported && (parsed.route === "" || parsed.route === sdk.name)) {
    return { kind: "grant", grant: { url: parsed.url, token: parsed.token, conversationId: parsed.conversation_id }, fallbackUrl };
  }
  return { kind: "fallback", fallbackUrl };
}

/** The lane's response, or null for a failure before its head that the baseline should mend. */
async function lane(
  fetch: FetchLike,
  headTimeoutMs: number,
  grant: Grant,
  route: LaneRoute,
  init: RequestInit | undefined,
): Promise<Response | null> {
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
    const response = await fetch(`${grant.url}${route.path}`, {
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

export function directFetch(options: DirectFetchOptions = {}): DirectFetch {
  const fetch: FetchLike = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const negotiateUrl = options.negotiateUrl ?? DEFAULTS.negotiateUrl;
  const headTimeoutMs = options.headTimeoutMs ?? DEFAULTS.headTimeoutMs;

  /** `unusedToken`: the lane grant the request could not use, which the baseline serves under. */
  const toApp = (url: string, init: RequestInit | undefined, unusedToken?: string): Promise<Response> => {
    const headers = ownHeaders(init);
    if (unusedToken !== undefined) headers.set(UNUSED_GRANT_HEADER, unusedToken);
    return fetch(url, { ...init, headers, credentials: "same-origin" });
  };

  return async (input, init) => {
    if (input instanceof Request) throw new TypeError("directFetch takes a URL and init, as the OpenAI SDK passes them");
    const url = new URL(String(input), pageUrl());
    const sdk = routeOf((init?.method ?? "GET").toUpperCase(), url.pathname);
    if (sdk === undefined) return toApp(url.href, init);
    const negotiated = await negotiate(fetch, negotiateUrl, sdk, init);
    if (negotiated instanceof Response) return negotiated;
    if (negotiated.kind === "grant") {
      const response = await lane(fetch, headTimeoutMs, negotiated.grant, sdk.route, init);
      if (response !== null) return response;
      return toApp(fallbackFor(sdk, negotiated.fallbackUrl), init, negotiated.grant.token);
    }
    return toApp(fallbackFor(sdk, negotiated.fallbackUrl), init);
  };

  /** The answer's `fallback_url` when it names this route; else the route's own path on the app. */
  function fallbackFor(sdk: SdkRoute, answered: string | undefined): string {
    if (answered?.endsWith(sdk.route.path)) return answered;
    if (sdk.name === DEFAULT_ROUTE && options.fallbackUrl !== undefined) return options.fallbackUrl;
    return sdk.route.path.slice(1);
  }
}
