/** What is read back from IndexedDB is checked, never trusted; titles are short and on one line. */
import { describe, expect, it } from "vitest";
import { dbNameFor, MAX_BRANCH_DEPTH, matchesSearch, type SavedConversation, titleFor, validConversation } from "../src/page/store.ts";
import { blankSettings } from "../src/page/settings.ts";

const good = {
  id: "c1",
  title: "Hello",
  updated: 5,
  turns: [{ text: "Hello", image: null, reply: "Hi" }, { text: "dot", image: "data:image/png;base64,AA", reply: "" }],
  settings: { system: "Be brief.", temperature: "0.2", maxTokens: "", topP: "0.9", topK: "", minP: "", repeatPenalty: "" },
};

describe("validConversation", () => {
  it("keeps a well-formed record", () => {
    expect(validConversation(good)).toEqual(good);
  });

  it("keeps a streaming turn's conversation id only when it looks like one the broker mints", () => {
    const turn = { text: "hi", image: null, reply: "" };
    const withPending = (pending: unknown) => validConversation({ ...good, turns: [{ ...turn, pending }] })?.turns[0]?.pending;
    expect(withPending("AbCdEf0123456789_-xyzQ")).toBe("AbCdEf0123456789_-xyzQ");
    for (const bad of ["short", "has space in it", "../../etc/passwd", 42, null, "x".repeat(200)]) expect(withPending(bad)).toBeUndefined();
  });

  it("fills settings that are missing or of the wrong type with blanks", () => {
    expect(validConversation({ ...good, settings: { system: 3 } })?.settings).toEqual(blankSettings());
    expect(validConversation({ ...good, settings: undefined })?.settings.system).toBe("");
  });

  for (const [label, bad] of [
    ["not an object", "x"],
    ["no id", { ...good, id: 1 }],
    ["turns not a list", { ...good, turns: {} }],
    ["a turn without text", { ...good, turns: [{ image: null, reply: "" }] }],
    ["an image that is no data: image", { ...good, turns: [{ text: "a", image: "https://evil.example/x.png", reply: "" }] }],
    ["an updated that is no number", { ...good, updated: "today" }],
  ] as const) {
    it(`skips a record with ${label}`, () => {
      expect(validConversation(bad)).toBeNull();
    });
  }
});

describe("titleFor", () => {
  it("is the first message on one line, cut short", () => {
    expect(titleFor([{ text: "  What is\n a llama? ", image: null, reply: "" }])).toBe("What is a llama?");
    expect(titleFor([{ text: "x".repeat(100), image: null, reply: "" }])).toHaveLength(60);
    expect(titleFor([])).toBe("New chat");
  });
});

describe("branches read back", () => {
  const branched = {
    ...good,
    turns: [{ text: "a", image: null, reply: "b2", branches: [{ reply: "b1", later: [{ text: "c", image: null, reply: "d" }] }, { reply: "", later: [] }], branch: 1 }],
  };

  it("keeps well-formed branches", () => {
    expect(validConversation(branched)).toEqual(branched);
  });

  for (const [label, turn] of [
    ["an index out of range", { ...branched.turns[0], branch: 2 }],
    ["a single branch", { ...branched.turns[0], branches: [{ reply: "x", later: [] }], branch: 0 }],
    ["a branch without later turns", { ...branched.turns[0], branches: [{ reply: "x" }, { reply: "", later: [] }] }],
  ] as const) {
    it(`drops branches with ${label}, keeping the turn`, () => {
      expect(validConversation({ ...good, turns: [turn] })?.turns).toEqual([{ text: "a", image: null, reply: "b2" }]);
    });
  }

  it("drops branches nested deeper than the bound", () => {
    let turn: Record<string, unknown> = { text: "t", image: null, reply: "r" };
    for (let depth = 0; depth < MAX_BRANCH_DEPTH + 2; depth++) {
      turn = { text: "t", image: null, reply: "r", branches: [{ reply: "x", later: [turn] }, { reply: "", later: [] }], branch: 1 };
    }
    const read = validConversation({ ...good, turns: [turn] });
    expect(read).not.toBeNull();
    expect(JSON.stringify(read).split('"branches"').length - 1).toBe(MAX_BRANCH_DEPTH);
  });
});

describe("matchesSearch", () => {
  const saved = validConversation(good) as SavedConversation;
  it("finds a word in the title, a message or a reply, in any case", () => {
    expect(matchesSearch(saved, "hello")).toBe(true);
    expect(matchesSearch(saved, "DOT")).toBe(true);
    expect(matchesSearch(saved, " hi ")).toBe(true);
    expect(matchesSearch(saved, "llama")).toBe(false);
    expect(matchesSearch(saved, "  ")).toBe(true);
  });
});

describe("dbNameFor", () => {
  it("keeps each user's conversations in a database of their own", () => {
    expect(dbNameFor("0123456789abcdef0123")).toBe("llama-direct.0123456789abcdef0123");
    expect(dbNameFor("")).toBe("llama-direct");
    expect(dbNameFor("../x")).toBe("llama-direct");
  });
});
