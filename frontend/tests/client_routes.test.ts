/** `streamResponses` and `streamMessages`: the same client as chat's, on the Responses and Messages routes. */
import { describe, expect, it } from "vitest";
import { type MessagesRequest, type ResponsesRequest, type StreamChatOptions, streamMessages, streamResponses } from "../src/client.ts";
import { toFlatText, type UIEvent } from "../src/shape.ts";
import { collect, FakeFetch, json, type Route, sse } from "./fake.ts";
import { fixture, splitAt } from "./helpers.ts";

const LANE = "https://chat.example/direct";
const ZOE = "Zoë is a friendly and curious creature with a warm smile.";
const RESPONSES_REQUEST: ResponsesRequest = { input: "Say hello to Zoë.", max_output_tokens: 48 };
const MESSAGES_REQUEST: MessagesRequest = { messages: [{ role: "user", content: "Say hello to Zoë." }], max_tokens: 48 };
type RouteName = "responses" | "messages";

function grant(route: RouteName, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    supported: true,
    url: LANE,
    token: "tok",
    expires_at: 2_000_000_000,
    ttl_seconds: 30,
    model: "smollm2",
    conversation_id: null,
    scope: route,
    route,
    grant: {},
    fallback_url: `/app/v1/${route}`,
    ...overrides,
  };
}

/** Every 97 bytes a read, so that events and characters are cut across reads. */
const chunks = (bytes: Uint8Array): Uint8Array[] =>
  splitAt(bytes, Array.from({ length: Math.ceil(bytes.length / 97) }, (_, i) => i * 97));

/** A fake whose negotiation, lane route and baseline (at the answered or the default path) answer as told. */
function server(route: RouteName, routes: { negotiate?: Route; lane?: Route; fallback?: Route }): FakeFetch {
  const plain = fixture(`${route}-plain.sse`);
  return new FakeFetch((call) => {
    if (call.url === "direct-stream") return routes.negotiate ?? (() => json(grant(route)));
    if (call.url === `${LANE}/v1/${route}`) return routes.lane ?? ((c) => sse(c, chunks(plain)));
    if (call.url === `/app/v1/${route}` || call.url === `v1/${route}`) return routes.fallback ?? ((c) => sse(c, chunks(plain)));
    throw new Error(`unexpected request ${call.method} ${call.url}`);
  });
}

function stream(route: RouteName, fake: FakeFetch, options: StreamChatOptions = {}): Promise<UIEvent[]> {
  const all: StreamChatOptions = { fetch: fake.fetch, sleep: async () => undefined, ...options };
  return collect(route === "responses" ? streamResponses(RESPONSES_REQUEST, all) : streamMessages(MESSAGES_REQUEST, all));
}

const last = (events: UIEvent[]): UIEvent | undefined => events[events.length - 1];

describe.each(["responses", "messages"] as const)("the %s route", (route) => {
  it("negotiates for the route with its length cap, then streams from the lane", async () => {
    const fake = server(route, {});
    const events = await stream(route, fake);
    expect(toFlatText(events)).toBe(ZOE);
    expect(events).toContainEqual({ type: "usage", prompt_tokens: 39, completion_tokens: 15 });
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "direct" });
    const [negotiation, direct] = fake.calls;
    expect(fake.calls).toHaveLength(2);
    expect(negotiation?.body).toEqual({ route, max_tokens: 48 });
    expect(direct).toMatchObject({ url: `${LANE}/v1/${route}`, method: "POST", credentials: "omit" });
    expect(direct?.headers.authorization).toBe("Bearer tok");
    const extra = route === "responses" ? { stream: true, return_progress: true } : { stream: true };
    expect(direct?.body).toEqual({ ...(route === "responses" ? RESPONSES_REQUEST : MESSAGES_REQUEST), ...extra });
  });

  it("falls back to the route's baseline before the first token: a 503, or a body that ends before any delta", async () => {
    const beforeText = new TextDecoder().decode(fixture(`${route}-plain.sse`)).split("delta").slice(0, 1).join("");
    const cut = new TextEncoder().encode(beforeText.slice(0, beforeText.lastIndexOf("\n\n") + 2));
    for (const lane of [() => json({}, 503), (c: Parameters<Route>[0]) => sse(c, [cut])] as Route[]) {
      const fake = server(route, { lane });
      const events = await stream(route, fake);
      expect(toFlatText(events)).toBe(ZOE);
      expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "fallback" });
      const fallback = fake.to(`/app/v1/${route}`);
      expect(fallback).toHaveLength(1);
      expect(fallback[0]?.headers.authorization).toBeUndefined();
      expect(fallback[0]?.body).toEqual(fake.to(`${LANE}/v1/${route}`)[0]?.body);
    }
  });

  it("sends nothing to the lane on a grant for another route, and takes the default baseline path when none is named", async () => {
    const fake = server(route, { negotiate: () => json(grant(route, { route: "chat", fallback_url: "" })) });
    const events = await stream(route, fake);
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "fallback" });
    expect(fake.to(LANE)).toEqual([]);
    expect(fake.to(`v1/${route}`).map((call) => call.url)).toEqual([`v1/${route}`]);
  });

  it("runs the tools the model calls and sends their results back in the route's own format", async () => {
    const toolCalls = fixture(`${route}-tool-calls.handmade.sse`);
    const fake = server(route, { lane: (c, nth) => sse(c, chunks(nth === 0 ? toolCalls : fixture(`${route}-plain.sse`))) });
    const tools = { current_time: () => "12:00", echo: (args: unknown) => args };
    const events = await stream(route, fake, { tools });
    expect(events.filter((e) => e.type === "tool_end").map((e) => (e.type === "tool_end" ? e.result : null))).toEqual([
      "12:00",
      { text: "héllo 🦙" },
    ]);
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "direct" });
    const second = fake.to(`${LANE}/v1/${route}`)[1]?.body as Record<string, unknown>;
    const [id1, id2] = ["Xq3vT9bLmN2pR7sK1wY5zA8cD4eF6gH0", "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV"].map((id) =>
      route === "responses" ? `call_${id}` : id,
    );
    if (route === "responses") {
      expect(second.input).toEqual([
        { role: "user", content: "Say hello to Zoë." },
        { type: "message", role: "assistant", content: [{ type: "output_text", text: "Let me check." }] },
        { type: "function_call", call_id: id1, name: "current_time", arguments: '{"timezone":"UTC"}' },
        { type: "function_call", call_id: id2, name: "echo", arguments: '{"text":"héllo 🦙"}' },
        { type: "function_call_output", call_id: id1, output: "12:00" },
        { type: "function_call_output", call_id: id2, output: '{"text":"héllo 🦙"}' },
      ]);
    } else {
      expect(second.messages).toEqual([
        ...MESSAGES_REQUEST.messages,
        {
          role: "assistant",
          content: [
            { type: "text", text: "Let me check." },
            { type: "tool_use", id: id1, name: "current_time", input: { timezone: "UTC" } },
            { type: "tool_use", id: id2, name: "echo", input: { text: "héllo 🦙" } },
          ],
        },
        {
          role: "user",
          content: [
            { type: "tool_result", tool_use_id: id1, content: "12:00" },
            { type: "tool_result", tool_use_id: id2, content: '{"text":"héllo 🦙"}' },
          ],
        },
      ]);
    }
  });
});
