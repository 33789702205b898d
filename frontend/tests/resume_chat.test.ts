/** `resumeChat`: a page reloaded mid-reply picks its stream up again by conversation id, from byte 0. */
import { describe, expect, it } from "vitest";
import { resumeChat, streamChat } from "../src/client.ts";
import { toFlatText } from "../src/shape.ts";
import { collect, FakeFetch, json, sse } from "./fake.ts";
import { fixture } from "./helpers.ts";

const LANE = "https://chat.example/direct";
const PLAIN = fixture("plain.sse");
const TEXT_PLAIN = "Zoë, hello! I'm Zoë, a friendly AI designed to help with your creative endeavors.";

function grant(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { supported: true, url: LANE, token: "tok", expires_at: 2_000_000_000, ttl_seconds: 30, model: "m",
    conversation_id: null, scope: "chat", grant: {}, fallback_url: "v1/chat/completions", ...overrides };
}

const pieces = (bytes: Uint8Array, size = 61): Uint8Array[] =>
  Array.from({ length: Math.ceil(bytes.length / size) }, (_, i) => bytes.slice(i * size, (i + 1) * size));

describe("resumeChat", () => {
  it("replays the stream from its first byte with a resume grant, and ends resumed", async () => {
    const fake = new FakeFetch((call) => {
      if (call.url === "direct-stream") return () => json(grant({ conversation_id: "conv-7", scope: "resume" }));
      if (call.url.startsWith(`${LANE}/v1/stream`)) return (c) => sse(c, pieces(PLAIN));
      throw new Error(`unexpected ${call.url}`);
    });
    const events = await collect(resumeChat("conv-7", { fetch: fake.fetch }));
    expect(toFlatText(events)).toBe(TEXT_PLAIN);
    expect(events.at(-1)).toEqual({ type: "finish", finish_reason: "stop", lane: "resumed" });
    expect(fake.to("direct-stream").map((c) => c.body)).toEqual([{ resume: "conv-7" }]);
    expect(fake.to("/v1/stream", "GET")[0]?.url).toBe(`${LANE}/v1/stream?conv_id=conv-7&from=0`);
  });

  it("says the stream is lost when the lane no longer holds it", async () => {
    const fake = new FakeFetch((call) => {
      if (call.url === "direct-stream") return () => json(grant({ conversation_id: "conv-7" }));
      return () => json({ error: { code: "not_found" } }, 404);
    });
    const events = await collect(resumeChat("conv-7", { fetch: fake.fetch }));
    expect(events).toEqual([expect.objectContaining({ type: "error", code: "stream_lost", phase: "pre-output" })]);
  });

  it("tells the caller each resumable stream's conversation id as its request goes out", async () => {
    const seen: string[] = [];
    const fake = new FakeFetch((call) => {
      if (call.url === "direct-stream") return () => json(grant({ conversation_id: "conv-8" }));
      return (c) => sse(c, pieces(PLAIN));
    });
    await collect(streamChat({ messages: [{ role: "user", content: "hi" }] }, { fetch: fake.fetch, resumable: true, onConversation: (id) => seen.push(id) }));
    expect(seen).toEqual(["conv-8"]);
  });
});
