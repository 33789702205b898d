/** The browser client once its stream has begun: after the first delta, abort, and the tool loop. */
import { describe, expect, it } from "vitest";
import { type StreamChatOptions, streamChat } from "../src/client.ts";
import { toFlatText, type UIEvent } from "../src/shape.ts";
import { chunks, errors, grant, LANE, last, PLAIN, REQUEST, run, server, TEXT_PLAIN } from "./client_harness.ts";
import { type BodyEnd, collect, FakeFetch, hang, json, sse } from "./fake.ts";
import { encode, fixture } from "./helpers.ts";

/** Offsets where the plain fixture has already shown text: past its first content chunk. */
function firstDeltaEnd(bytes: Uint8Array): number {
  const text = new TextDecoder().decode(bytes);
  const at = text.indexOf('"content":"Z"');
  return encode(text.slice(0, text.indexOf("\n\n", at) + 2)).length;
}

describe("after the first delta", () => {
  for (const end of ["error", "close"] as BodyEnd[]) {
    it(`fails visibly when a non-resumable stream breaks (${end}), keeping the partial text`, async () => {
      const cut = firstDeltaEnd(PLAIN) + 40;
      const fake = server({ lane: (c) => sse(c, chunks(PLAIN.slice(0, cut)), end) });
      const events = await run(fake);
      expect(toFlatText(events)).toBe("Z");
      expect(last(events)).toEqual({
        type: "error",
        code: "truncated",
        message: "The connection was lost before the reply finished. The partial reply is kept above.",
        phase: "mid-stream",
      });
      expect(fake.calls).toHaveLength(2);
    });
  }

  it("resumes from the byte offset received, at every offset, with nothing lost or doubled", async () => {
    const start = firstDeltaEnd(PLAIN);
    const text = new TextDecoder().decode(PLAIN);
    const finishEnd = encode(text.slice(0, text.indexOf("\n\n", text.indexOf('"finish_reason":"stop"')) + 2)).length;
    for (let cut = start; cut < PLAIN.length; cut += 13) {
      const end: BodyEnd = cut % 2 === 0 ? "error" : "close";
      const fake = server({
        negotiate: (call) => {
          const ask = call.body as Record<string, unknown>;
          return json(grant({ conversation_id: "conv-9", token: ask.resume ? "tok-resume" : "tok-chat" }));
        },
        lane: (c) => sse(c, chunks(PLAIN.slice(0, cut), 50), end),
        stream: (c) => sse(c, chunks(PLAIN.slice(cut), 61)),
      });
      const events = await run(fake, { resumable: true });
      expect(toFlatText(events)).toBe(TEXT_PLAIN);
      expect(errors(events)).toEqual([]);
      // A body that closes cleanly after finish_reason has ended: only a broken one resumes there.
      if (cut >= finishEnd && end === "close") {
        expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "direct" });
        continue;
      }
      expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "resumed" });
      expect(events).toContainEqual({ type: "usage", prompt_tokens: 44, completion_tokens: 23 });
      expect(fake.to("direct-stream").map((c) => c.body)).toEqual([{ max_tokens: 48, resumable: true }, { resume: "conv-9" }]);
      const [resume] = fake.to("/v1/stream", "GET");
      expect(resume?.url).toBe(`${LANE}/v1/stream?conv_id=conv-9&from=${cut}`);
      expect(resume?.headers.authorization).toBe("Bearer tok-resume");
    }
  });

  it("resumes inside a multi-byte character without mangling it", async () => {
    const bytes = fixture("multibyte.sse");
    const cut = new TextDecoder().decode(bytes).indexOf("🦙") + 0;
    const offset = encode(new TextDecoder().decode(bytes).slice(0, cut)).length + 2;
    const fake = server({
      negotiate: () => json(grant({ conversation_id: "c" })),
      lane: (c) => sse(c, [bytes.slice(0, offset)], "error"),
      stream: (c) => sse(c, [bytes.slice(offset)]),
    });
    const events = await run(fake, { resumable: true });
    expect(toFlatText(events)).toBe("Llamas 🦙 say héllo, 你好!  haha haha.");
  });

  it("fails visibly when resuming fails, without duplicating text", async () => {
    const cut = firstDeltaEnd(PLAIN) + 700;
    const fake = server({
      negotiate: () => json(grant({ conversation_id: "conv-2" })),
      lane: (c) => sse(c, [PLAIN.slice(0, cut)], "error"),
      stream: () => json({ error: { code: 404 } }, 404),
    });
    const events = await run(fake, { resumable: true, maxResumes: 2 });
    expect(fake.to("/v1/stream", "GET")).toHaveLength(2);
    expect(TEXT_PLAIN.startsWith(toFlatText(events))).toBe(true);
    expect(toFlatText(events).length).toBeGreaterThan(1);
    expect(last(events)).toMatchObject({ type: "error", code: "truncated", phase: "mid-stream" });
    expect(fake.calls.filter((c) => !c.url.startsWith(LANE) && c.url.includes("chat/completions"))).toEqual([]);
  });

  it("never falls back after the first delta, even on a server error frame", async () => {
    const cut = firstDeltaEnd(PLAIN);
    const frame = encode('data: {"error":{"code":500,"type":"server_error","message":"slot died"}}\n\n');
    const fake = server({ lane: (c) => sse(c, [PLAIN.slice(0, cut), frame]) });
    const events = await run(fake);
    expect(toFlatText(events)).toBe("Z");
    expect(last(events)).toMatchObject({ type: "error", code: "server_error", phase: "mid-stream" });
    expect(fake.calls).toHaveLength(2);
  });
});

describe("abort", () => {
  async function abortAfterFirstText(fake: FakeFetch, options: StreamChatOptions = {}): Promise<UIEvent[]> {
    const controller = new AbortController();
    const events: UIEvent[] = [];
    for await (const event of streamChat(REQUEST, { fetch: fake.fetch, signal: controller.signal, ...options })) {
      events.push(event);
      if (event.type === "text_delta") controller.abort();
    }
    return events;
  }

  it("stops the stream, keeps the partial text and closes the fetch", async () => {
    const cut = firstDeltaEnd(PLAIN);
    const fake = server({ lane: (c) => sse(c, [PLAIN.slice(0, cut)], "stall") });
    const events = await abortAfterFirstText(fake);
    expect(toFlatText(events)).toBe("Z");
    expect(last(events)).toEqual({ type: "abort" });
    expect(fake.calls[1]?.signal?.aborted).toBe(true);
    expect(fake.calls).toHaveLength(2);
  });

  it("cancels a resumable stream with a cancel token and DELETE /v1/stream", async () => {
    const cut = firstDeltaEnd(PLAIN);
    const fake = server({
      negotiate: (call) =>
        json(grant({ conversation_id: "conv-3", token: (call.body as Record<string, unknown>).cancel ? "tok-cancel" : "tok-chat" })),
      lane: (c) => sse(c, [PLAIN.slice(0, cut)], "stall"),
      stream: () => new Response(null, { status: 204 }),
    });
    const events = await abortAfterFirstText(fake, { resumable: true });
    expect(last(events)).toEqual({ type: "abort" });
    expect(fake.to("direct-stream").map((c) => c.body)).toEqual([{ resumable: true, max_tokens: 48 }, { cancel: "conv-3" }]);
    const [cancel] = fake.to("/v1/stream", "DELETE");
    expect(cancel?.url).toBe(`${LANE}/v1/stream?conv_id=conv-3`);
    expect(cancel?.headers.authorization).toBe("Bearer tok-cancel");
    expect(cancel?.signal?.aborted).toBe(false);
  });

  it("closes the fetch when the consumer stops iterating early", async () => {
    const cut = firstDeltaEnd(PLAIN);
    const fake = server({ lane: (c) => sse(c, [PLAIN.slice(0, cut)], "stall") });
    for await (const event of streamChat(REQUEST, { fetch: fake.fetch })) {
      if (event.type === "text_delta") break;
    }
    expect(fake.calls[1]?.signal?.aborted).toBe(true);
  });

  it("emits only abort when stopped before anything was sent", async () => {
    const controller = new AbortController();
    controller.abort();
    const fake = server({});
    expect(await collect(streamChat(REQUEST, { fetch: fake.fetch, signal: controller.signal }))).toEqual([{ type: "abort" }]);
    expect(fake.calls).toEqual([]);
  });

  it("aborts while the negotiation's body is being read, without falling back", async () => {
    const controller = new AbortController();
    const fake = server({
      negotiate: (call) => {
        setTimeout(() => controller.abort(), 5);
        const body = new ReadableStream<Uint8Array>({
          start(stream) {
            call.signal?.addEventListener("abort", () => stream.error(new DOMException("aborted", "AbortError")));
          },
        });
        return new Response(body, { status: 200, headers: { "Content-Type": "application/json" } });
      },
    });
    const events = await collect(streamChat(REQUEST, { fetch: fake.fetch, signal: controller.signal }));
    expect(events).toEqual([{ type: "abort" }]);
    expect(fake.calls).toHaveLength(1);
  });

  it("aborts while the lane's head is pending", async () => {
    const controller = new AbortController();
    const fake = server({
      lane: (c) => {
        setTimeout(() => controller.abort(), 5);
        return hang(c);
      },
    });
    const events = await collect(streamChat(REQUEST, { fetch: fake.fetch, signal: controller.signal }));
    expect(events).toEqual([{ type: "abort" }]);
    expect(fake.calls).toHaveLength(2);
  });
});

describe("the tool loop", () => {
  const TOOLS = fixture("tool-calls.handmade.sse");

  it("runs each tool, reports a throwing one as an error result, and continues with a new negotiation", async () => {
    let rounds = 0;
    const fake = server({ lane: (c) => sse(c, chunks(rounds++ === 0 ? TOOLS : PLAIN)) });
    const seen: unknown[] = [];
    const events = await run(fake, {
      tools: {
        current_time: async (args) => {
          seen.push(args);
          return { time: "12:00", timezone: "UTC" };
        },
        echo: async () => {
          throw new Error("secret /etc/passwd");
        },
      },
    });
    expect(seen).toEqual([{ timezone: "UTC" }]);
    const tools = events.filter((e) => e.type.startsWith("tool_"));
    expect(tools).toEqual([
      { type: "tool_start", tool_name: "current_time", tool_call_id: "Xq3vT9bLmN2pR7sK1wY5zA8cD4eF6gH0", arguments: { timezone: "UTC" } },
      { type: "tool_status", content: "Calling: current_time" },
      { type: "tool_end", tool_name: "current_time", tool_call_id: "Xq3vT9bLmN2pR7sK1wY5zA8cD4eF6gH0", result: { time: "12:00", timezone: "UTC" } },
      { type: "tool_start", tool_name: "echo", tool_call_id: "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV", arguments: { text: "héllo 🦙" } },
      { type: "tool_status", content: "Calling: echo" },
      {
        type: "tool_end",
        tool_name: "echo",
        tool_call_id: "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV",
        result: { error: "tool_failed", message: "The tool echo failed." },
      },
      { type: "tool_status", content: "" },
    ]);
    expect(toFlatText(events)).toBe(TEXT_PLAIN);
    expect(last(events)).toEqual({ type: "finish", finish_reason: "stop", lane: "direct" });
    expect(fake.to("direct-stream")).toHaveLength(2);
    const second = fake.to(`${LANE}/v1/chat/completions`)[1]?.body as { messages: unknown[] };
    expect(second.messages).toEqual([
      { role: "user", content: "hi" },
      {
        role: "assistant",
        content: null,
        tool_calls: [
          { id: "Xq3vT9bLmN2pR7sK1wY5zA8cD4eF6gH0", type: "function", function: { name: "current_time", arguments: '{"timezone":"UTC"}' } },
          { id: "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV", type: "function", function: { name: "echo", arguments: '{"text":"héllo 🦙"}' } },
        ],
      },
      { role: "tool", tool_call_id: "Xq3vT9bLmN2pR7sK1wY5zA8cD4eF6gH0", content: '{"time":"12:00","timezone":"UTC"}' },
      {
        role: "tool",
        tool_call_id: "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV",
        content: '{"error":"tool_failed","message":"The tool echo failed."}',
      },
    ]);
    expect(JSON.stringify(events)).not.toContain("passwd");
  });

  it("answers a tool it does not know with an error result", async () => {
    let rounds = 0;
    const fake = server({ lane: (c) => sse(c, chunks(rounds++ === 0 ? TOOLS : PLAIN)) });
    const events = await run(fake, { tools: {} });
    expect(events.filter((e) => e.type === "tool_end").map((e) => (e as { result: unknown }).result)).toEqual([
      { error: "unknown_tool", message: "No tool is named current_time." },
      { error: "unknown_tool", message: "No tool is named echo." },
    ]);
  });

  it("stops after the round cap with a visible error", async () => {
    const fake = server({ lane: (c) => sse(c, chunks(TOOLS)) });
    let runs = 0;
    const count = async (): Promise<string> => {
      runs += 1;
      return "ok";
    };
    const events = await run(fake, { maxToolRounds: 2, tools: { current_time: count, echo: count } });
    expect(fake.to("direct-stream")).toHaveLength(3);
    expect(runs).toBe(4);
    expect(events.slice(-2)).toEqual([
      {
        type: "error",
        code: "tool_rounds_exceeded",
        message: "Stopped: the model kept asking for tools past the round limit.",
        phase: "mid-stream",
      },
      { type: "finish", finish_reason: "tool_calls", lane: "direct" },
    ]);
  });

  it("sends a string result as is", async () => {
    let rounds = 0;
    const fake = server({ lane: (c) => sse(c, chunks(rounds++ === 0 ? TOOLS : PLAIN)) });
    await run(fake, { tools: { current_time: () => "noon", echo: () => "e" } });
    const second = fake.to(`${LANE}/v1/chat/completions`)[1]?.body as { messages: { content: unknown }[] };
    expect(second.messages.slice(2).map((m) => m.content)).toEqual(["noon", "e"]);
  });
});
