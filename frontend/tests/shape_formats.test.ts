import { describe, expect, it } from "vitest";
import type { ShapedEvent } from "../src/shape.ts";
import { shapeFormatItems, type StreamFormat } from "../src/shape-format.ts";
import type { StreamItem } from "../src/sse.ts";
import { coalesce, encode, fixture, randomSplit, shapeFormatBytes, splitAt } from "./helpers.ts";

const shapeBytes = shapeFormatBytes;

/** The events with the timings reduced to their token count (the rest are clock readings). */
function summary(events: ShapedEvent[]): unknown[] {
  return coalesce(events).map((event) => (event.type === "timings" ? { type: "timings", n: event.predicted_n } : event));
}

const progress = (total: number, cache: number, processed: number, time_ms: number): ShapedEvent => ({
  type: "progress",
  total,
  cache,
  processed,
  time_ms,
});
const text = (t: string): ShapedEvent => ({ type: "text_delta", text: t });
const usage = (prompt_tokens: number, completion_tokens: number): ShapedEvent => ({ type: "usage", prompt_tokens, completion_tokens });
const end = (finish_reason: string): ShapedEvent => ({ type: "end", finish_reason });
const reasoning = (t: string): ShapedEvent[] => [
  { type: "reasoning_start" },
  { type: "reasoning_delta", text: t },
  { type: "reasoning_end" },
];

const ZOE = "Zoë is a friendly and curious creature with a warm smile.";
const TOOL_CALLS = (prefix: string): ShapedEvent => ({
  type: "tool_calls",
  calls: [
    {
      id: `${prefix}Xq3vT9bLmN2pR7sK1wY5zA8cD4eF6gH0`,
      name: "current_time",
      arguments: { timezone: "UTC" },
      raw: '{"timezone":"UTC"}',
      valid: true,
    },
    { id: `${prefix}aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV`, name: "echo", arguments: { text: "héllo 🦙" }, raw: '{"text":"héllo 🦙"}', valid: true },
  ],
});

/** Each recorded (or hand-made) stream with what it shapes to: the same events a chat stream gives. */
const CASES: { format: StreamFormat; name: string; expected: unknown[] }[] = [
  {
    format: "responses",
    name: "responses-plain.sse",
    expected: [progress(39, 0, 0, 0), progress(39, 0, 39, 250), text(ZOE), usage(39, 15), { type: "timings", n: 15 }, end("stop")],
  },
  {
    format: "responses",
    name: "responses-length.sse",
    expected: [
      progress(37, 24, 24, 0),
      progress(37, 24, 37, 88),
      text("Llamas are a fascinating and often misunderstood creature. They"),
      usage(37, 12),
      { type: "timings", n: 12 },
      // llama-server says "completed" however the generation stopped.
      end("stop"),
    ],
  },
  {
    format: "responses",
    name: "responses-multibyte.sse",
    // It opens on part of the emoji, so llama-server sends response.created again before every delta.
    expected: [text("🦙 Llamas say héllo, 你好!"), usage(33, 23), { type: "timings", n: 23 }, end("stop")],
  },
  {
    format: "responses",
    name: "responses-reasoning.sse",
    expected: [
      progress(22, 0, 0, 0),
      progress(22, 0, 22, 171),
      ...reasoning("Think first, then answer.\n"),
      text("The answer is two plus two."),
      usage(22, 20),
      { type: "timings", n: 20 },
      end("stop"),
    ],
  },
  {
    format: "responses",
    name: "responses-tool-calls.handmade.sse",
    expected: [
      progress(180, 0, 0, 0),
      progress(180, 0, 180, 1151),
      ...reasoning("The user wants the time."),
      text("Let me check."),
      TOOL_CALLS("call_"),
      usage(180, 31),
      { type: "timings", n: 31 },
      end("tool_calls"),
    ],
  },
  { format: "messages", name: "messages-plain.sse", expected: [text(ZOE), usage(39, 15), end("stop")] },
  {
    format: "messages",
    name: "messages-thinking.sse",
    expected: [
      ...reasoning(
        "Two plus two is a mathematical operation that involves two numbers added together. In the context of " +
          "arithmetic, it's a fundamental operation that has been used for centuries to add numbers together. It's a",
      ),
      usage(22, 40),
      end("length"),
    ],
  },
  // No message_start: the stream opened on part of an emoji. The prompt's tokens are then unknown.
  { format: "messages", name: "messages-no-start.sse", expected: [text("👌🌳✨🌱🌊"), usage(0, 16), end("length")] },
  {
    format: "messages",
    name: "messages-tool-calls.handmade.sse",
    expected: [...reasoning("The user wants the time."), text("Let me check."), TOOL_CALLS(""), usage(180, 31), end("tool_calls")],
  },
];

describe("recorded Responses and Messages streams", () => {
  for (const { format, name, expected } of CASES) {
    const bytes = fixture(name);
    const whole = shapeBytes(format, [bytes]);

    it(`${name}: shapes to the same events as chat`, () => {
      expect(summary(whole)).toEqual(expected);
    });

    it(`${name}: identical at every byte boundary, and cut in three`, () => {
      for (let cut = 1; cut < bytes.length; cut++) expect(shapeBytes(format, splitAt(bytes, [cut]))).toEqual(whole);
      const third = Math.floor(bytes.length / 3);
      for (let cut = 1; cut < third; cut += 7) {
        expect(shapeBytes(format, splitAt(bytes, [cut, cut + third]))).toEqual(whole);
      }
      for (let seed = 1; seed <= 50; seed++) expect(shapeBytes(format, randomSplit(bytes, seed, 2))).toEqual(whole);
      for (let seed = 1; seed <= 50; seed++) expect(shapeBytes(format, randomSplit(bytes, seed, 1 + (seed % 60)))).toEqual(whole);
    });
  }
});

const chunk = (event: Record<string, unknown>): StreamItem => ({ kind: "chunk", chunk: event });
const typesOf = (events: ShapedEvent[]): string[] => events.map((event) => event.type);

describe("Responses shaping", () => {
  const delta = (d: string): StreamItem => chunk({ type: "response.output_text.delta", item_id: "msg_1", delta: d });
  const completed = (response: Record<string, unknown>): StreamItem => chunk({ type: "response.completed", response });

  it("ends without [DONE] at response.completed, and is a truncation without it", () => {
    expect(typesOf(shapeFormatItems("responses", [delta("hi"), completed({ status: "completed" })]))).toEqual(["text_delta", "end"]);
    const cut = shapeFormatItems("responses", [delta("hi")]);
    expect(cut[cut.length - 1]).toEqual(expect.objectContaining({ type: "error", code: "truncated", phase: "mid-stream" }));
  });

  it("takes the final text that only the done event carries, never twice", () => {
    const events = shapeFormatItems("responses", [
      delta("Hel"),
      chunk({ type: "response.output_text.done", item_id: "msg_1", text: "Hello" }),
      chunk({ type: "response.output_item.done", item: { type: "message", id: "msg_1", content: [{ type: "output_text", text: "Hello" }] } }),
      completed({ status: "completed" }),
    ]);
    expect(coalesce(events)).toEqual([text("Hello"), end("stop")]);
  });

  it("reads a function call that only the final output_item.done names", () => {
    const events = shapeFormatItems("responses", [
      chunk({ type: "response.output_item.done", item: { type: "function_call", id: "fc_1", call_id: "call_1", name: "f", arguments: '{"a":1}' } }),
      completed({ status: "completed" }),
    ]);
    expect(events[0]).toEqual({
      type: "tool_calls",
      calls: [{ id: "call_1", name: "f", arguments: { a: 1 }, raw: '{"a":1}', valid: true }],
    });
    expect(events[1]).toEqual(end("tool_calls"));
  });

  it("reads OpenAI's reasoning summaries and its incomplete end", () => {
    const events = shapeFormatItems("responses", [
      chunk({ type: "response.reasoning_summary_text.delta", item_id: "rs_1", delta: "plan" }),
      delta("an"),
      chunk({ type: "response.incomplete", response: { status: "incomplete", incomplete_details: { reason: "max_output_tokens" } } }),
    ]);
    expect(coalesce(events)).toEqual([...reasoning("plan"), text("an"), end("length")]);
  });

  it("turns an error event, response.failed and llama-server's error frame into a friendly error", () => {
    const frames = [
      'event: error\ndata: {"type":"error","code":"server_error","message":"secret /models/x.gguf"}\n\n',
      'data: {"type":"error","code":"server_error","message":"secret"}\n\n',
      'event: response.failed\ndata: {"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"secret"}}}\n\n',
      'data: {"error":{"code":500,"message":"secret","type":"server_error"}}\n\n',
    ];
    for (const frame of frames) {
      const head = 'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":"m","delta":"Hi"}\n\n';
      const events = shapeBytes("responses", [encode(head + frame)]);
      expect(events).toEqual([text("Hi"), expect.objectContaining({ type: "error", code: "server_error", phase: "mid-stream" })]);
      expect(JSON.stringify(events)).not.toContain("secret");
    }
  });
});

describe("Messages shaping", () => {
  const textDelta = (t: string, index = 0): StreamItem =>
    chunk({ type: "content_block_delta", index, delta: { type: "text_delta", text: t } });
  const stop = (reason: string): StreamItem => chunk({ type: "message_delta", delta: { stop_reason: reason }, usage: { output_tokens: 2 } });

  it("counts cached prompt tokens, maps each stop reason, and ends at message_stop", () => {
    const start = chunk({ type: "message_start", message: { usage: { input_tokens: 3, cache_read_input_tokens: 5, output_tokens: 0 } } });
    for (const [reason, finish] of [["end_turn", "stop"], ["stop_sequence", "stop"], ["max_tokens", "length"], ["refusal", "refusal"]]) {
      const events = shapeFormatItems("messages", [start, textDelta("hi"), stop(reason ?? ""), chunk({ type: "message_stop" })]);
      expect(events).toEqual([text("hi"), usage(8, 2), end(finish ?? "")]);
    }
  });

  it("ends after a stop reason even when message_stop never came, and is a truncation without one", () => {
    expect(typesOf(shapeFormatItems("messages", [textDelta("hi"), stop("end_turn")]))).toEqual(["text_delta", "usage", "end"]);
    const cut = shapeFormatItems("messages", [textDelta("hi"), chunk({ type: "ping" })]);
    expect(cut[cut.length - 1]).toEqual(expect.objectContaining({ type: "error", code: "truncated" }));
  });

  it("takes the words a text or thinking block starts with as it takes its deltas' words", () => {
    const begin = (index: number, block: Record<string, unknown>): StreamItem => chunk({ type: "content_block_start", index, content_block: block });
    const thinking = chunk({ type: "content_block_delta", index: 0, delta: { type: "thinking_delta", thinking: " more" } });
    const items = [begin(0, { type: "thinking", thinking: "plan" }), thinking, begin(1, { type: "text", text: "an" }), textDelta("swer", 1)];
    const events = shapeFormatItems("messages", [...items, begin(2, { type: "text", text: "" }), stop("end_turn")]);
    expect(coalesce(events)).toEqual([...reasoning("plan more"), text("answer"), usage(0, 2), end("stop")]);
  });

  it("reads inline think tags in text blocks as chat does", () => {
    const events = shapeFormatItems("messages", [textDelta("<thi"), textDelta("nk>plan</think>answer"), stop("end_turn")]);
    expect(coalesce(events)).toEqual([...reasoning("plan"), text("answer"), usage(0, 2), end("stop")]);
  });

  it("turns Anthropic's and llama-server's error events into a friendly error", () => {
    const frames = [
      'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"secret"}}\n\n',
      'event: error\ndata: {"code":500,"message":"secret","type":"server_error"}\n\n',
    ];
    for (const frame of frames) {
      const events = shapeBytes("messages", [encode(frame)]);
      expect(events).toEqual([expect.objectContaining({ type: "error", phase: "pre-output" })]);
      expect(JSON.stringify(events)).not.toContain("secret");
    }
  });
});
