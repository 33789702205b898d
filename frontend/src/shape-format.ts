/**
 * One shaper for every stream format a lane route speaks: chat completions, OpenAI Responses and
 * Anthropic Messages give the same events.
 *
 * A Responses or Messages stream is translated event by event into the chat chunks that mean the
 * same (`shape-responses.ts`, `shape-messages.ts`) and shaped by the one chat shaper, so reasoning,
 * inline `<think>` tags, tool-call merging, usage and the end of the stream are decided in one place
 * and a stream split anywhere shapes the same in every format.
 */
import { type Phase, type ShapedEvent, type ShaperOptions, StreamShaper } from "./shape.ts";
import type { StreamItem } from "./sse.ts";
import { MessagesTranslator } from "./shape-messages.ts";
import { ResponsesTranslator } from "./shape-responses.ts";

/** The stream formats: the `body` of the lane routes that stream (`lanes.ts`). */
export type StreamFormat = "chat" | "responses" | "messages";

/** A format's events into chat stream items; pure, fed one parsed event at a time. */
export interface Translator {
  translate(event: Record<string, unknown>): StreamItem[];
}

/** What a stream body needs from a shaper, whatever the format. */
export interface Shaper {
  push(item: StreamItem): ShapedEvent[];
  end(): ShapedEvent[];
  readonly emittedDelta: boolean;
  readonly complete: boolean;
  readonly failed: boolean;
  readonly phase: Phase;
}

/** The chat shaper behind a translator: only parsed events are translated, the rest pass as they are. */
class TranslatedShaper implements Shaper {
  private readonly inner: StreamShaper;

  constructor(
    private readonly translator: Translator,
    options: ShaperOptions,
  ) {
    this.inner = new StreamShaper(options);
  }

  push(item: StreamItem): ShapedEvent[] {
    if (item.kind !== "chunk") return this.inner.push(item);
    const out: ShapedEvent[] = [];
    for (const translated of this.translator.translate(item.chunk)) out.push(...this.inner.push(translated));
    return out;
  }

  end(): ShapedEvent[] {
    return this.inner.end();
  }

  get emittedDelta(): boolean {
    return this.inner.emittedDelta;
  }

  get complete(): boolean {
    return this.inner.complete;
  }

  get failed(): boolean {
    return this.inner.failed;
  }

  get phase(): Phase {
    return this.inner.phase;
  }
}

export function createShaper(format: StreamFormat, options: ShaperOptions = {}): Shaper {
  switch (format) {
    case "chat":
      return new StreamShaper(options);
    case "responses":
      return new TranslatedShaper(new ResponsesTranslator(), options);
    case "messages":
      return new TranslatedShaper(new MessagesTranslator(), options);
  }
}

/** A whole body at once, in any format: for fixtures, tests and non-streaming callers. */
export function shapeFormatItems(format: StreamFormat, items: Iterable<StreamItem>, options?: ShaperOptions): ShapedEvent[] {
  const shaper = createShaper(format, options);
  const out: ShapedEvent[] = [];
  for (const item of items) out.push(...shaper.push(item));
  out.push(...shaper.end());
  return out;
}
