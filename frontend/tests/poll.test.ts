import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ModelPicker } from "../src/page/models.ts";
import { POLL_MS, pollEvery, tokensFlow } from "../src/page/poll.ts";

/** The page's poll of `/v1/models` while a reply waits (issue 24: it asked every 400 ms, for the whole reply). */
describe("the model poll", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.unstubAllGlobals();
  });

  it("is what the model picker's watch does: /v1/models every 2 s, one poll for all, none once unwatched", async () => {
    const asked: string[] = [];
    vi.stubGlobal("fetch", async (url: string) => {
      asked.push(url);
      return new Response(JSON.stringify({ data: [{ id: "alpha", status: "loading", progress: 0.5 }] }));
    });
    vi.stubGlobal("document", { createElement: () => ({ dataset: {} }) });
    const select = { value: "", hidden: false, addEventListener: () => undefined, replaceChildren: () => undefined };
    const picker = new ModelPicker(select as unknown as HTMLSelectElement);
    const seen: (string | undefined)[] = [];
    const first = picker.watch(() => seen.push("first"));
    const second = picker.watch(() => seen.push("second"));
    await vi.advanceTimersByTimeAsync(5000);
    expect(asked).toEqual(["v1/models", "v1/models", "v1/models"]); // at 0, 2 and 4 s, shared by both watches
    first();
    await vi.advanceTimersByTimeAsync(2000);
    expect(asked.length).toBe(4);
    second();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(asked.length).toBe(4);
    expect(seen.filter((name) => name === "second").length).toBe(4);
  });

  it("asks at once, then at most once every 2 s", async () => {
    expect(POLL_MS).toBeGreaterThanOrEqual(2000);
    const calls: number[] = [];
    const stop = pollEvery(async () => {
      calls.push(Date.now());
    });
    await vi.advanceTimersByTimeAsync(10_000);
    stop();
    expect(calls.length).toBe(6); // 0, 2, 4, 6, 8 and 10 s
    for (let i = 1; i < calls.length; i += 1) expect((calls[i] ?? 0) - (calls[i - 1] ?? 0)).toBeGreaterThanOrEqual(2000);
  });

  it("waits for a slow answer before it counts the 2 s, so calls never stack up", async () => {
    const started: number[] = [];
    const stop = pollEvery(async () => {
      started.push(Date.now());
      await new Promise((done) => setTimeout(done, 3000));
    });
    await vi.advanceTimersByTimeAsync(12_000);
    stop();
    expect(started.length).toBe(3); // 0, 5 and 10 s
    for (let i = 1; i < started.length; i += 1) expect((started[i] ?? 0) - (started[i - 1] ?? 0)).toBe(5000);
  });

  it("asks nothing more once stopped, and goes on after a failed call", async () => {
    let calls = 0;
    const stop = pollEvery(async () => {
      calls += 1;
      if (calls === 1) throw new Error("offline");
    });
    await vi.advanceTimersByTimeAsync(2000);
    expect(calls).toBe(2);
    stop();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(calls).toBe(2);
  });

  it("stops for good once tokens flow", async () => {
    let calls = 0;
    const stop = pollEvery(async () => {
      calls += 1;
    });
    const events = [{ type: "progress" }, { type: "notice" }, { type: "text_delta" }, { type: "text_delta" }];
    let stopped = false;
    for (const event of events) {
      await vi.advanceTimersByTimeAsync(2000);
      if (!stopped && tokensFlow(event)) {
        stop();
        stopped = true;
      }
    }
    await vi.advanceTimersByTimeAsync(60_000);
    expect(calls).toBe(4); // at 0, 2, 4 and 6 s; the first token came at 6 s
    expect(["text_delta", "reasoning_start", "reasoning_delta", "tool_start"].every((type) => tokensFlow({ type })))
      .toBe(true);
    expect(["progress", "notice", "usage", "error"].some((type) => tokensFlow({ type }))).toBe(false);
  });
});
