/** The browser client under test against a fake server (negotiation, lane, baseline), for client*.test.ts. */
import { type ChatRequest, type StreamChatOptions, streamChat } from "../src/client.ts";
import type { UIEvent } from "../src/shape.ts";
import { collect, FakeFetch, json, type Route, sse } from "./fake.ts";
import { fixture, splitAt } from "./helpers.ts";

export const LANE = "https://chat.example/direct";
export const TEXT_PLAIN = "Zoë, hello! I'm Zoë, a friendly AI designed to help with your creative endeavors.";
export const REQUEST: ChatRequest = { messages: [{ role: "user", content: "hi" }], max_tokens: 48 };
export const PLAIN = fixture("plain.sse");

export function grant(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    supported: true,
    url: LANE,
    token: "tok-chat",
    expires_at: 2_000_000_000,
    ttl_seconds: 30,
    model: "smollm2",
    conversation_id: null,
    scope: "chat",
    grant: {},
    fallback_url: "/app/v1/chat/completions",
    ...overrides,
  };
}

export const chunks = (bytes: Uint8Array, size = 97): Uint8Array[] =>
  splitAt(
    bytes,
    Array.from({ length: Math.ceil(bytes.length / size) }, (_, i) => i * size),
  );

/** A fake whose negotiation, lane and baseline each answer from the given routes. */
export function server(routes: { negotiate?: Route; lane?: Route; fallback?: Route; stream?: Route }): FakeFetch {
  return new FakeFetch((call) => {
    if (call.url === "direct-stream") return routes.negotiate ?? (() => json(grant()));
    if (call.url.startsWith(`${LANE}/v1/chat/completions`)) return routes.lane ?? ((c) => sse(c, chunks(PLAIN)));
    if (call.url.startsWith(`${LANE}/v1/stream`)) return routes.stream ?? (() => json({}, 404));
    const path = call.url.split("?")[0];
    if (path === "/app/v1/chat/completions" || path === "v1/chat/completions") {
      return routes.fallback ?? ((c) => sse(c, chunks(PLAIN)));
    }
    throw new Error(`unexpected request ${call.method} ${call.url}`);
  });
}

export function run(fake: FakeFetch, options: StreamChatOptions = {}, request: ChatRequest = REQUEST): Promise<UIEvent[]> {
  const slept: number[] = [];
  return collect(
    streamChat(request, {
      fetch: fake.fetch,
      sleep: async (ms) => {
        slept.push(ms);
      },
      ...options,
    }),
  );
}

export const last = (events: UIEvent[]): UIEvent | undefined => events[events.length - 1];
export const errors = (events: UIEvent[]): UIEvent[] => events.filter((e) => e.type === "error");
