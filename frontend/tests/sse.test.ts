import { describe, expect, it } from "vitest";
import { createSSEDecoder, interpretEvent, parseErrorBody } from "../src/sse.ts";
import { decodeAll, encode, fixture, randomSplit, splitAt } from "./helpers.ts";

const STREAM_FIXTURES = [
  "plain.sse",
  "length.sse",
  "multibyte.sse",
  "reasoning.sse",
  "reasoning-then-text.sse",
  "prefilled-think.sse",
  "inline-think.sse",
  "tool-calls.handmade.sse",
];

function withLineEnding(bytes: Uint8Array, ending: string): Uint8Array {
  return encode(new TextDecoder().decode(bytes).replaceAll("\n", ending));
}

describe("decoder on recorded streams", () => {
  for (const name of STREAM_FIXTURES) {
    const bytes = fixture(name);
    const whole = decodeAll([bytes]);

    it(`${name}: ends in [DONE] and every other event is JSON`, () => {
      expect(whole[whole.length - 1]).toEqual({ data: "[DONE]" });
      for (const event of whole.slice(0, -1)) expect(interpretEvent(event).kind).toBe("chunk");
    });

    it(`${name}: identical when split at every byte boundary`, () => {
      for (let cut = 1; cut < bytes.length; cut++) {
        expect(decodeAll(splitAt(bytes, [cut]))).toEqual(whole);
      }
    });

    it(`${name}: identical when fed one byte at a time`, () => {
      expect(decodeAll(Array.from(bytes, (_, i) => bytes.subarray(i, i + 1)))).toEqual(whole);
    });

    it(`${name}: identical under 100 seeded random splits`, () => {
      for (let seed = 1; seed <= 100; seed++) {
        expect(decodeAll(randomSplit(bytes, seed, 1 + (seed % 40)))).toEqual(whole);
      }
    });

    for (const [label, ending] of [
      ["CRLF", "\r\n"],
      ["CR", "\r"],
    ] as const) {
      it(`${name}: ${label} line endings give the same events at every boundary`, () => {
        const variant = withLineEnding(bytes, ending);
        expect(decodeAll([variant])).toEqual(whole);
        for (let cut = 1; cut < variant.length; cut += 7) {
          expect(decodeAll(splitAt(variant, [cut, cut + 1, cut + 3]))).toEqual(whole);
        }
      });
    }
  }
});

describe("decoder edge cases", () => {
  it("joins a CRLF whose CR ends one read and whose LF starts the next", () => {
    const decoder = createSSEDecoder();
    expect(decoder.push(encode("data: a\r"))).toEqual([]);
    expect(decoder.push(encode("\n\r"))).toEqual([]);
    expect(decoder.push(encode("\ndata: b\r\n\r\n"))).toEqual([{ data: "a" }, { data: "b" }]);
    expect(decoder.end()).toEqual([]);
  });

  it("treats a lone CR at the end of a read as a line end once more bytes arrive", () => {
    const decoder = createSSEDecoder();
    expect(decoder.push(encode("data: a\r"))).toEqual([]);
    expect(decoder.push(encode("\rdata: b\r\r"))).toEqual([{ data: "a" }]);
    expect(decoder.end()).toEqual([{ data: "b" }]);
  });

  it("joins a 4-byte character split inside its UTF-8 sequence at every offset", () => {
    const bytes = encode('data: {"t":"🦙你é"}\n\n');
    const start = bytes.indexOf(0xf0);
    for (let cut = start + 1; cut < start + 9; cut++) {
      expect(decodeAll(splitAt(bytes, [cut]))).toEqual([{ data: '{"t":"🦙你é"}' }]);
    }
  });

  it("discards an event that the body ended before its blank line, as the SSE spec says", () => {
    expect(decodeAll([encode("data: [DONE]")])).toEqual([]);
    expect(decodeAll([encode('data: {"a":1}\n\ndata: [DONE]\n')])).toEqual([{ data: '{"a":1}' }]);
  });

  it("ends a line at a CR that is the last byte of the body", () => {
    expect(decodeAll([encode("data: [DONE]\r\r")])).toEqual([{ data: "[DONE]" }]);
    expect(decodeAll(splitAt(encode("data: [DONE]\r\r"), [13]))).toEqual([{ data: "[DONE]" }]);
  });

  it("ignores comment lines such as llama-server's keep-alive ping", () => {
    expect(decodeAll([encode(':\n\ndata: {"a":1}\n\n')])).toEqual([{ data: '{"a":1}' }]);
  });

  it("strips a UTF-8 byte order mark at the start of the stream", () => {
    const bytes = new Uint8Array([0xef, 0xbb, 0xbf, ...encode("data: x\n\n")]);
    expect(decodeAll(splitAt(bytes, [1, 2]))).toEqual([{ data: "x" }]);
  });

  it("keeps the event name and joins multi-line data", () => {
    expect(decodeAll([encode("event: error\ndata: a\ndata: b\n\n")])).toEqual([{ event: "error", data: "a\nb" }]);
  });

  it("marks the decoder overflowed on a line past the buffer cap", () => {
    const decoder = createSSEDecoder();
    decoder.push(encode("data: " + "x".repeat(8 * 1024 * 1024 + 10)));
    expect(decoder.overflowed).toBe(true);
    expect(decoder.push(encode("\n\n"))).toEqual([]);
  });
});

describe("interpretEvent", () => {
  it("recognises [DONE], with or without surrounding space", () => {
    expect(interpretEvent({ data: "[DONE]" })).toEqual({ kind: "done" });
    expect(interpretEvent({ data: " [DONE] " })).toEqual({ kind: "done" });
  });

  it("reads an OpenAI-style error frame", () => {
    expect(interpretEvent({ data: '{"error":{"code":500,"message":"boom","type":"server_error"}}' })).toEqual({
      kind: "error",
      error: { code: 500, message: "boom", type: "server_error" },
    });
  });

  it("reads an `event: error` frame, wrapped or bare, and one whose data is not JSON", () => {
    expect(interpretEvent({ event: "error", data: '{"error":{"type":"x"}}' })).toEqual({
      kind: "error",
      error: { type: "x" },
    });
    expect(interpretEvent({ event: "error", data: '{"type":"y"}' })).toEqual({ kind: "error", error: { type: "y" } });
    expect(interpretEvent({ event: "error", data: "oops" })).toEqual({ kind: "error", error: {} });
  });

  it("keeps the usage chunk, whose choices are empty", () => {
    const item = interpretEvent({ data: '{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}' });
    expect(item).toEqual({ kind: "chunk", chunk: { choices: [], usage: { prompt_tokens: 1, completion_tokens: 2 } } });
  });

  it("calls non-JSON or non-object data malformed", () => {
    expect(interpretEvent({ data: "hello" })).toEqual({ kind: "malformed" });
    expect(interpretEvent({ data: "[1,2]" })).toEqual({ kind: "malformed" });
  });
});

describe("parseErrorBody", () => {
  it("reads llama-server's recorded context overflow body", () => {
    const body = new TextDecoder().decode(fixture("overflow.json"));
    expect(parseErrorBody(body)).toEqual({
      code: 400,
      message: "request (9030 tokens) exceeds the available context size (2048 tokens), try increasing it",
      type: "exceed_context_size_error",
      n_prompt_tokens: 9030,
      n_ctx: 2048,
    });
  });

  it("reads a FastAPI detail, and gives an empty error for anything else", () => {
    expect(parseErrorBody('{"detail":"Not authenticated"}')).toEqual({ message: "Not authenticated" });
    expect(parseErrorBody("<html>Bad gateway</html>")).toEqual({});
    expect(parseErrorBody('{"error":"plain"}')).toEqual({});
  });
});
