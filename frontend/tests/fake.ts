/** A scripted stand-in for `fetch`: records every call and answers from a router the test writes. */

export interface Call {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: unknown;
  credentials: RequestCredentials | undefined;
  signal: AbortSignal | undefined;
}

export type Route = (call: Call, nth: number) => Response | Promise<Response>;

export class FakeFetch {
  readonly calls: Call[] = [];

  constructor(private readonly router: (call: Call) => Route) {}

  readonly fetch = async (input: string, init: RequestInit = {}): Promise<Response> => {
    const headers: Record<string, string> = {};
    new Headers(init.headers).forEach((value, key) => {
      headers[key] = value;
    });
    const call: Call = {
      url: input,
      method: init.method ?? "GET",
      headers,
      body: typeof init.body === "string" ? JSON.parse(init.body) : undefined,
      credentials: init.credentials,
      signal: init.signal ?? undefined,
    };
    this.calls.push(call);
    const route = this.router(call);
    const nth = this.calls.filter((c) => c.url === call.url && c.method === call.method).length - 1;
    if (call.signal?.aborted) throw new DOMException("The operation was aborted.", "AbortError");
    return route(call, nth);
  };

  to(fragment: string, method?: string): Call[] {
    return this.calls.filter((c) => c.url.includes(fragment) && (method === undefined || c.method === method));
  }
}

export function json(value: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

export type BodyEnd = "close" | "error" | "stall";

/**
 * An SSE response whose body yields `pieces` one read each, then closes, breaks like a dropped
 * connection, or stalls until the request's signal aborts (as a real fetch body does).
 */
export function sse(call: Call, pieces: Uint8Array[], end: BodyEnd = "close", status = 200): Response {
  let closed = false;
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      call.signal?.addEventListener("abort", () => {
        if (!closed) controller.error(new DOMException("The operation was aborted.", "AbortError"));
      });
    },
    async pull(controller) {
      await Promise.resolve();
      const next = pieces.shift();
      if (next !== undefined) {
        controller.enqueue(next);
        return;
      }
      if (end === "close") {
        closed = true;
        controller.close();
      } else if (end === "error") {
        closed = true;
        controller.error(new TypeError("network error"));
      } else {
        await new Promise(() => undefined);
      }
    },
  });
  return new Response(stream, { status, headers: { "Content-Type": "text/event-stream" } });
}

/** A request whose head never arrives: it rejects only when its signal aborts. */
export function hang(call: Call): Promise<Response> {
  return new Promise((_, reject) => {
    call.signal?.addEventListener("abort", () =>
      reject(new DOMException("The operation was aborted.", "AbortError")),
    );
  });
}

export function networkError(): Promise<Response> {
  return Promise.reject(new TypeError("Failed to fetch"));
}

export async function collect<T>(events: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const event of events) out.push(event);
  return out;
}
