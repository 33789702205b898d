import { describe, expect, it } from "vitest";
import { type ShapedEvent, StreamShaper, type ShaperOptions, shapeItems, toFlatText } from "../src/shape.ts";
import type { StreamItem } from "../src/sse.ts";
import { coalesce, fixture, randomSplit, shapeBytes, splitAt } from "./helpers.ts";

const TEXT_PLAIN = "Zoë, hello! I'm Zoë, a friendly AI designed to help with your creative endeavors.";
const TEXT_AFTER_THINK = "This is a classic lateral thinking puzzle that requires you to think creatively.";

/** Each recorded stream with what it must shape to, whole and at every split. */
const CASES: { name: string; options?: ShaperOptions; flat: string; finish: string; usage: [number, number] }[] = [
  { name: "plain.sse", flat: TEXT_PLAIN, finish: "stop", usage: [44, 23] },
  { name: "length.sse", flat: "A llama is a domesticated animal with a unique appearance", finish: "length", usage: [38, 12] },
  { name: "multibyte.sse", flat: "Llamas 🦙 say héllo, 你好!  haha haha.", finish: "stop", usage: [34, 28] },
  { name: "reasoning.sse", flat: '<think>The answer is "think."</think>', finish: "stop", usage: [23, 8] },
  {
    name: "reasoning-then-text.sse",
    flat: `<think>Think first, then answer.\n</think>${TEXT_AFTER_THINK}`,
    finish: "stop",
    usage: [26, 28],
  },
  {
    name: "prefilled-think.sse",
    options: { prefilledThink: true },
    flat: `<think>Think first, then answer.\n</think>${TEXT_AFTER_THINK}`,
    finish: "stop",
    usage: [26, 28],
  },
  {
    name: "inline-think.sse",
    flat:
      "<think>The answer is two. Think first, then answer.\n</think>" +
      "This is a classic example of a logical fallacy called the Ad Hominem fallacy. It",
    finish: "stop",
    usage: [43, 48],
  },
  { name: "tool-calls.handmade.sse", flat: "", finish: "tool_calls", usage: [180, 31] },
];

function ofType<T extends ShapedEvent["type"]>(events: ShapedEvent[], type: T): Extract<ShapedEvent, { type: T }>[] {
  return events.filter((event): event is Extract<ShapedEvent, { type: T }> => event.type === type);
}

describe("recorded streams", () => {
  for (const { name, options, flat, finish, usage } of CASES) {
    const bytes = fixture(name);
    const whole = shapeBytes([bytes], options);

    it(`${name}: shapes to the expected text, usage, timings and end`, () => {
      expect(toFlatText(whole)).toBe(flat);
      const [prompt, completion] = usage;
      expect(ofType(whole, "usage")).toEqual([{ type: "usage", prompt_tokens: prompt, completion_tokens: completion }]);
      const timings = ofType(whole, "timings");
      expect(timings).toHaveLength(1);
      expect(timings[0]?.predicted_n).toBe(completion);
      expect(typeof timings[0]?.predicted_per_second).toBe("number");
      expect(whole[whole.length - 1]).toEqual({ type: "end", finish_reason: finish });
      expect(ofType(whole, "error")).toEqual([]);
      expect(ofType(whole, "reasoning_start").length).toBe(flat.startsWith("<think>") ? 1 : 0);
      expect(ofType(whole, "reasoning_end").length).toBe(flat.startsWith("<think>") ? 1 : 0);
    });

    it(`${name}: reports prompt progress first`, () => {
      const progress = ofType(whole, "progress");
      expect(progress.length).toBe(2);
      expect(whole[0]?.type).toBe("progress");
      expect(progress[1]?.processed).toBe(progress[1]?.total);
    });

    it(`${name}: identical at every byte boundary and under seeded random splits`, () => {
      for (let cut = 1; cut < bytes.length; cut++) expect(shapeBytes(splitAt(bytes, [cut]), options)).toEqual(whole);
      for (let seed = 1; seed <= 100; seed++) {
        expect(shapeBytes(randomSplit(bytes, seed, 1 + (seed % 60)), options)).toEqual(whole);
      }
    });
  }

  it("tool-calls.handmade.sse: merges the fragments by index and finalises them at finish_reason", () => {
    const events = shapeBytes([fixture("tool-calls.handmade.sse")]);
    expect(ofType(events, "tool_calls")).toEqual([
      {
        type: "tool_calls",
        calls: [
          {
            id: "Xq3vT9bLmN2pR7sK1wY5zA8cD4eF6gH0",
            name: "current_time",
            arguments: { timezone: "UTC" },
            raw: '{"timezone":"UTC"}',
            valid: true,
          },
          {
            id: "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV",
            name: "echo",
            arguments: { text: "héllo 🦙" },
            raw: '{"text":"héllo 🦙"}',
            valid: true,
          },
        ],
      },
    ]);
    expect(events.map((e) => e.type).slice(-4)).toEqual(["tool_calls", "usage", "timings", "end"]);
  });

  it("prefilled-think.sse without the option drops the lone </think> and keeps the text", () => {
    const events = shapeBytes([fixture("prefilled-think.sse")]);
    expect(toFlatText(events)).toBe(`Think first, then answer.\n${TEXT_AFTER_THINK}`);
  });
});

/** Items for a stream whose content, reasoning or tool deltas are given one chunk each. */
const chunk = (delta: Record<string, unknown>, finish: string | null = null): StreamItem => ({
  kind: "chunk",
  chunk: { choices: [{ index: 0, delta, finish_reason: finish }] },
});
const content = (text: string): StreamItem => chunk({ content: text });
const stop: StreamItem = chunk({}, "stop");
const done: StreamItem = { kind: "done" };

/** Every way of cutting `text` into two or three content chunks, shaped and coalesced. */
function everySplit(text: string, options?: ShaperOptions): ShapedEvent[][] {
  const results: ShapedEvent[][] = [];
  for (let i = 0; i <= text.length; i++) {
    for (let j = i; j <= text.length; j++) {
      const parts = [text.slice(0, i), text.slice(i, j), text.slice(j)].filter((p) => p !== "");
      results.push(coalesce(shapeItems([...parts.map(content), stop, done], options)));
    }
  }
  return results;
}

describe("inline think tags", () => {
  const expected: ShapedEvent[] = [
    { type: "reasoning_start" },
    { type: "reasoning_delta", text: "plan" },
    { type: "reasoning_end" },
    { type: "text_delta", text: "answer" },
    { type: "end", finish_reason: "stop" },
  ];

  it("detects <think>…</think> however the tags are cut across chunks", () => {
    for (const result of everySplit("<think>plan</think>answer")) expect(result).toEqual(expected);
  });

  it("allows leading whitespace before <think> and trims it after each tag", () => {
    for (const result of everySplit(" \n<think>\nplan</think>\n\nanswer")) expect(result).toEqual(expected);
  });

  it("handles the template-prefilled case, where only </think> arrives", () => {
    for (const result of everySplit("plan</think>answer", { prefilledThink: true })) expect(result).toEqual(expected);
  });

  it("in prefilled mode swallows a <think> the model writes anyway", () => {
    for (const result of everySplit("<think>plan</think>answer", { prefilledThink: true })) {
      expect(result).toEqual(expected);
    }
  });

  it("keeps text that merely starts like a tag", () => {
    expect(coalesce(shapeItems([content("<thi"), content("nking> is fun"), stop, done]))).toEqual([
      { type: "text_delta", text: "<thinking> is fun" },
      { type: "end", finish_reason: "stop" },
    ]);
  });

  it("keeps a <think> that comes after text as text, with its closing tag", () => {
    expect(toFlatText(shapeItems([content("a "), content("<think>b</think>"), stop, done]))).toBe("a <think>b</think>");
    expect(toFlatText(shapeItems([content("a <th"), content("ink>b</th"), content("ink>"), stop, done]))).toBe(
      "a <think>b</think>",
    );
  });

  it("emits a partial tag held at the finish as what it was", () => {
    expect(toFlatText(shapeItems([content("x <"), stop, done]))).toBe("x <");
    expect(toFlatText(shapeItems([content("<think>a</thi"), stop, done]))).toBe("<think>a</thi</think>");
    expect(toFlatText(shapeItems([content("<thi"), stop, done]))).toBe("<thi");
  });

  it("holds back only the partial tag, streaming the rest at once", () => {
    const shaper = new StreamShaper();
    expect(shaper.push(content("<think>abc</th"))).toEqual([
      { type: "reasoning_start" },
      { type: "reasoning_delta", text: "abc" },
    ]);
    expect(shaper.push(content("ink>x"))).toEqual([{ type: "reasoning_end" }, { type: "text_delta", text: "x" }]);
  });

  it("gives an empty think block no reasoning events", () => {
    expect(shapeItems([content("<think>"), content("</think>"), content("hi"), stop, done])).toEqual([
      { type: "text_delta", text: "hi" },
      { type: "end", finish_reason: "stop" },
    ]);
  });
});

describe("reasoning fields", () => {
  it("reads one field when a server fills two with the same text", () => {
    expect(shapeItems([chunk({ reasoning_content: "a", reasoning: "a" }), content("b"), stop, done])).toEqual([
      { type: "reasoning_start" },
      { type: "reasoning_delta", text: "a" },
      { type: "reasoning_end" },
      { type: "text_delta", text: "b" },
      { type: "end", finish_reason: "stop" },
    ]);
  });

  for (const field of ["reasoning_content", "reasoning", "thinking"]) {
    it(`reads ${field}, and opens and closes exactly once`, () => {
      const events = shapeItems([
        chunk({ [field]: "\n  a" }),
        chunk({ [field]: "b" }),
        content("c"),
        chunk({ [field]: "late" }),
        content("d"),
        stop,
        done,
      ]);
      expect(events).toEqual([
        { type: "reasoning_start" },
        { type: "reasoning_delta", text: "a" },
        { type: "reasoning_delta", text: "b" },
        { type: "reasoning_end" },
        { type: "text_delta", text: "c" },
        { type: "text_delta", text: "d" },
        { type: "end", finish_reason: "stop" },
      ]);
    });
  }

  it("closes at the first tool delta", () => {
    const events = shapeItems([
      chunk({ reasoning_content: "r" }),
      chunk({ tool_calls: [{ index: 0, id: "c1", type: "function", function: { name: "f" } }] }),
      chunk({}, "tool_calls"),
      done,
    ]);
    expect(events.map((e) => e.type)).toEqual(["reasoning_start", "reasoning_delta", "reasoning_end", "tool_calls", "end"]);
  });

  it("closes at the finish when no text follows", () => {
    expect(shapeItems([chunk({ reasoning_content: "r" }), stop, done]).map((e) => e.type)).toEqual([
      "reasoning_start",
      "reasoning_delta",
      "reasoning_end",
      "end",
    ]);
  });

  it("does not reopen for an inline <think> after a reasoning field closed", () => {
    const events = shapeItems([chunk({ reasoning_content: "r" }), content("<think>x</think>"), stop, done]);
    expect(toFlatText(events)).toBe("<think>r</think><think>x</think>");
    expect(events.filter((e) => e.type === "reasoning_start")).toHaveLength(1);
  });
});

describe("tool calls", () => {
  const header = (index: number, id: string, name: string): StreamItem =>
    chunk({ tool_calls: [{ index, id, type: "function", function: { name } }] });
  const args = (index: number, text: string): StreamItem =>
    chunk({ tool_calls: [{ index, function: { arguments: text } }] });

  it("never finalises on a prefix that merely parses", () => {
    const shaper = new StreamShaper();
    expect(shaper.push(header(0, "a", "f"))).toEqual([]);
    expect(shaper.push(args(0, '{"n": 1'))).toEqual([]);
    expect(shaper.push(args(0, "}"))).toEqual([]);
    expect(shaper.push(args(0, ""))).toEqual([]);
    expect(shaper.push(chunk({}, "tool_calls"))).toEqual([
      { type: "tool_calls", calls: [{ id: "a", name: "f", arguments: { n: 1 }, raw: '{"n": 1}', valid: true }] },
    ]);
  });

  it("finalises at [DONE] when no finish_reason came", () => {
    expect(shapeItems([header(0, "a", "f"), args(0, "{}"), done])).toEqual([
      { type: "tool_calls", calls: [{ id: "a", name: "f", arguments: {}, raw: "{}", valid: true }] },
      { type: "end", finish_reason: null },
    ]);
  });

  it("reports non-JSON arguments as an error carrying the raw string", () => {
    const events = shapeItems([content("ok"), header(0, "a", "f"), args(0, "{not json"), chunk({}, "tool_calls"), done]);
    expect(events).toEqual([
      { type: "text_delta", text: "ok" },
      {
        type: "error",
        code: "bad_tool_arguments",
        message: "The model asked for a tool with arguments that are not valid JSON.",
        phase: "mid-stream",
        raw: "{not json",
      },
      { type: "tool_calls", calls: [{ id: "a", name: "f", arguments: null, raw: "{not json", valid: false }] },
      { type: "end", finish_reason: "tool_calls" },
    ]);
  });

  it("treats empty arguments as an empty object and names a call without an id by its index", () => {
    const events = shapeItems([chunk({ tool_calls: [{ index: 2, function: { name: "now" } }] }), chunk({}, "tool_calls"), done]);
    expect(events[0]).toEqual({
      type: "tool_calls",
      calls: [{ id: "call_2", name: "now", arguments: {}, raw: "", valid: true }],
    });
  });

  it("does not run tools from a truncated stream", () => {
    const events = shapeItems([header(0, "a", "f"), args(0, "{}")]);
    expect(events.map((e) => e.type)).toEqual(["error"]);
  });
});

describe("ends and errors", () => {
  it("calls a stream that ends without [DONE] or finish_reason a truncation", () => {
    expect(shapeItems([content("par")])).toEqual([
      { type: "text_delta", text: "par" },
      {
        type: "error",
        code: "truncated",
        message: "The connection was lost before the reply finished. The partial reply is kept above.",
        phase: "mid-stream",
      },
    ]);
    const early = shapeItems([chunk({ role: "assistant", content: null })]);
    expect(early).toEqual([expect.objectContaining({ code: "truncated", phase: "pre-output" })]);
  });

  it("accepts a finish_reason without [DONE] as the end", () => {
    expect(shapeItems([content("a"), stop])).toEqual([
      { type: "text_delta", text: "a" },
      { type: "end", finish_reason: "stop" },
    ]);
  });

  it("keeps the usage chunk with empty choices and passes every timing field", () => {
    const usage: StreamItem = {
      kind: "chunk",
      chunk: {
        choices: [],
        usage: { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12 },
        timings: { predicted_per_second: 120.5, prompt_n: 5 },
      },
    };
    expect(shapeItems([content("a"), stop, usage, done])).toEqual([
      { type: "text_delta", text: "a" },
      { type: "usage", prompt_tokens: 5, completion_tokens: 7 },
      { type: "timings", predicted_per_second: 120.5, prompt_n: 5 },
      { type: "end", finish_reason: "stop" },
    ]);
  });

  it("turns an error frame into a friendly error that never shows the server's text", () => {
    const events = shapeItems([
      content("a"),
      { kind: "error", error: { code: 500, message: "secret /path/to/model.gguf", type: "server_error" } },
      content("ignored"),
    ]);
    expect(events).toEqual([
      { type: "text_delta", text: "a" },
      {
        type: "error",
        code: "server_error",
        message: "Something went wrong while generating the reply. Please try again.",
        phase: "mid-stream",
      },
    ]);
  });

  it("says the context sizes of an in-stream context overflow", () => {
    const events = shapeItems([
      { kind: "error", error: { code: 400, type: "exceed_context_size_error", n_prompt_tokens: 9030, n_ctx: 2048 } },
    ]);
    expect(events).toEqual([
      {
        type: "error",
        code: "context_overflow",
        message:
          "Message too long: 9,030 tokens exceeds the 2,048-token context window. Shorten it or start a new chat.",
        phase: "pre-output",
      },
    ]);
  });

  it("closes open reasoning before an error so the page's blocks stay balanced", () => {
    const events = shapeItems([chunk({ reasoning_content: "r" }), { kind: "error", error: {} }]);
    expect(events.map((e) => e.type)).toEqual(["reasoning_start", "reasoning_delta", "reasoning_end", "error"]);
  });

  it("fails on a malformed event and ignores everything after the end", () => {
    expect(shapeItems([{ kind: "malformed" }, content("x")])).toEqual([
      expect.objectContaining({ type: "error", code: "bad_response", phase: "pre-output" }),
    ]);
    expect(shapeItems([content("a"), stop, done, content("b"), done])).toEqual([
      { type: "text_delta", text: "a" },
      { type: "end", finish_reason: "stop" },
    ]);
  });

  it("tracks the point of no return", () => {
    const shaper = new StreamShaper();
    shaper.push({ kind: "chunk", chunk: { choices: [], prompt_progress: { total: 3, processed: 1 } } });
    shaper.push(content("<th"));
    expect(shaper.emittedDelta).toBe(false);
    expect(shaper.phase).toBe("pre-output");
    shaper.push(content("ink>r"));
    expect(shaper.emittedDelta).toBe(true);
    expect(shaper.complete).toBe(false);
    shaper.push(stop);
    expect(shaper.complete).toBe(true);
  });
});

describe("toFlatText", () => {
  it("wraps reasoning in think tags and closes an unfinished block", () => {
    expect(
      toFlatText([
        { type: "reasoning_start" },
        { type: "reasoning_delta", text: "r" },
        { type: "reasoning_end" },
        { type: "text_delta", text: "t" },
      ]),
    ).toBe("<think>r</think>t");
    expect(toFlatText([{ type: "reasoning_start" }, { type: "reasoning_delta", text: "r" }, { type: "abort" }])).toBe(
      "<think>r</think>",
    );
  });
});
