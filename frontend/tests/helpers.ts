import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { ShapedEvent, ShaperOptions } from "../src/shape.ts";
import { createShaper, type StreamFormat } from "../src/shape-format.ts";
import { createSSEDecoder, interpretEvent, type SSEEvent } from "../src/sse.ts";

export const FIXTURES = fileURLToPath(new URL("./fixtures/", import.meta.url));

export function fixture(name: string): Uint8Array {
  return new Uint8Array(readFileSync(FIXTURES + name));
}

export const encode = (text: string): Uint8Array => new TextEncoder().encode(text);

/** Cut `bytes` at the given offsets (sorted, deduplicated, within range). */
export function splitAt(bytes: Uint8Array, offsets: number[]): Uint8Array[] {
  const cuts = [...new Set(offsets.filter((o) => o > 0 && o < bytes.length))].sort((a, b) => a - b);
  const pieces: Uint8Array[] = [];
  let start = 0;
  for (const cut of cuts) {
    pieces.push(bytes.subarray(start, cut));
    start = cut;
  }
  pieces.push(bytes.subarray(start));
  return pieces;
}

/** mulberry32: a seeded generator, so a failing random split can be replayed from its seed. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomSplit(bytes: Uint8Array, seed: number, cuts: number): Uint8Array[] {
  const next = seeded(seed);
  return splitAt(
    bytes,
    Array.from({ length: cuts }, () => 1 + Math.floor(next() * (bytes.length - 1))),
  );
}

export function decodeAll(pieces: Uint8Array[]): SSEEvent[] {
  const decoder = createSSEDecoder();
  const events: SSEEvent[] = [];
  for (const piece of pieces) events.push(...decoder.push(piece));
  events.push(...decoder.end());
  return events;
}

/** The whole browser pipeline minus the network: bytes -> SSE -> items -> shaped events. */
export function shapeBytes(pieces: Uint8Array[], options?: ShaperOptions): ShapedEvent[] {
  return shapeFormatBytes("chat", pieces, options);
}

/** The same pipeline for a stream in any lane route's format. */
export function shapeFormatBytes(format: StreamFormat, pieces: Uint8Array[], options?: ShaperOptions): ShapedEvent[] {
  const decoder = createSSEDecoder();
  const shaper = createShaper(format, options);
  const out: ShapedEvent[] = [];
  for (const piece of pieces) {
    for (const event of decoder.push(piece)) out.push(...shaper.push(interpretEvent(event)));
  }
  for (const event of decoder.end()) out.push(...shaper.push(interpretEvent(event)));
  out.push(...shaper.end());
  return out;
}

/** Adjacent text or reasoning deltas joined: splits change how text is cut, never what it says. */
export function coalesce(events: ShapedEvent[]): ShapedEvent[] {
  const out: ShapedEvent[] = [];
  for (const event of events) {
    const last = out[out.length - 1];
    if (
      last !== undefined &&
      (event.type === "text_delta" || event.type === "reasoning_delta") &&
      last.type === event.type
    ) {
      out[out.length - 1] = { type: event.type, text: last.text + event.text };
    } else {
      out.push(event);
    }
  }
  return out;
}
