import { describe, expect, it } from "vitest";
import type { MyUsage } from "../src/documents.ts";
import { parseUsage, tokens, usageShown } from "../src/page/usage.ts";

const OWNER: MyUsage = {
  sub: "local", name: null, tokens_per_day: null, tokens_per_minute: null, day_used: 120, day_left: null,
  minute_used: 0, minute_left: null, since: "2026-12-07", rows: [],
};
const DAILY: MyUsage = { ...OWNER, sub: "u1", name: "alice", tokens_per_day: 1000, day_used: 66, day_left: 934 };

describe("parseUsage", () => {
  it("reads the broker's document", () => {
    expect(parseUsage(JSON.parse(JSON.stringify(DAILY)))).toEqual(DAILY);
  });

  it.each([
    ["not an object", "usage"],
    ["null", null],
    ["a negative count", { ...DAILY, day_used: -1 }],
    ["a fraction", { ...DAILY, day_left: 1.5 }],
    ["a string number", { ...DAILY, tokens_per_day: "1000" }],
    ["no rows", { ...DAILY, rows: undefined }],
  ])("refuses %s", (_, raw) => {
    expect(parseUsage(raw)).toBeNull();
  });
});

describe("usageShown", () => {
  it("shows nothing for the owner or a user without token limits", () => {
    expect(usageShown(OWNER)).toBeNull();
  });

  it("shows what is left today, the whole account in words", () => {
    expect(usageShown(DAILY)).toEqual({
      left: "934", window: "today", out: false,
      sentence: "Your token budget: 934 of 1,000 tokens left today (66 used).",
    });
  });

  it("names the minute's window too where it is set, and shows it alone without a daily limit", () => {
    const both = { ...DAILY, tokens_per_minute: 200, minute_used: 50, minute_left: 150 };
    expect(usageShown(both)?.sentence).toBe("Your token budget: 934 of 1,000 tokens left today (66 used); 150 of 200 left this minute.");
    const minute = { ...OWNER, tokens_per_minute: 200, minute_used: 200, minute_left: 0 };
    expect(usageShown(minute)).toMatchObject({ left: "0", window: "this minute", out: true });
  });

  it("marks an exhausted day", () => {
    expect(usageShown({ ...DAILY, day_used: 1000, day_left: 0 })?.out).toBe(true);
  });
});

describe("tokens", () => {
  it.each([
    [0, "0"],
    [950, "950"],
    [9_500, "9,500"],
    [95_000, "95K"],
    [1_250_000, "1.3M"],
  ])("%d reads %s", (value, text) => {
    expect(tokens(value)).toBe(text);
  });
});
