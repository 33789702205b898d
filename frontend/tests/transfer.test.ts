/** An import is someone's file: bounded, checked field by field, unknown fields dropped, never trusted. */
import { describe, expect, it } from "vitest";
import { exportDocument, FORMAT, MAX_IMPORT_BYTES, mergeImport, parseImport } from "../src/page/transfer.ts";
import type { SavedConversation } from "../src/page/store.ts";

const conversation: SavedConversation = {
  id: "c1",
  title: "Hello",
  updated: 10,
  turns: [
    {
      text: "Hello",
      image: null,
      reply: "Hi again",
      branches: [{ reply: "Hi", later: [{ text: "more", image: null, reply: "yes" }] }, { reply: "", later: [] }],
      branch: 1,
    },
  ],
  settings: { system: "Be brief.", temperature: "0.2", maxTokens: "", topP: "0.9", topK: "", minP: "", repeatPenalty: "" },
};

describe("export and import", () => {
  it("round-trips the conversations, branches and settings included", () => {
    const text = JSON.stringify(exportDocument([conversation], new Date(0)));
    expect(JSON.parse(text)).toMatchObject({ format: FORMAT, version: 1, exported: "1970-01-01T00:00:00.000Z" });
    expect(parseImport(text)).toEqual({ ok: true, conversations: [conversation], skipped: 0 });
  });

  it("drops fields it does not know, at every level", () => {
    const doc = exportDocument([{ ...conversation, extra: "<script>", turns: [{ ...conversation.turns[0], onclick: "x" }] } as unknown as SavedConversation]);
    const result = parseImport(JSON.stringify({ ...doc, also: 1 }));
    expect(result.ok && result.conversations[0]).toEqual(conversation);
    expect(JSON.stringify(result)).not.toContain("script");
    expect(JSON.stringify(result)).not.toContain("onclick");
  });

  it("skips a malformed conversation and counts it", () => {
    const doc = { ...exportDocument([conversation]), conversations: [conversation, { id: 3 }, { ...conversation, id: "c2", turns: [{ text: "a", image: "https://evil.example/x.png", reply: "" }] }] };
    const result = parseImport(JSON.stringify(doc));
    expect(result).toEqual({ ok: true, conversations: [conversation], skipped: 2 });
  });

  for (const [label, text, size] of [
    ["not JSON", "{nope", undefined],
    ["another format", JSON.stringify({ format: "other", version: 1, conversations: [] }), undefined],
    ["a list", "[]", undefined],
    ["a later version", JSON.stringify({ format: FORMAT, version: 2, conversations: [] }), undefined],
    ["too large", "{}", MAX_IMPORT_BYTES + 1],
    ["too many conversations", JSON.stringify({ format: FORMAT, version: 1, conversations: Array(10_001).fill(0) }), undefined],
  ] as const) {
    it(`refuses a file that is ${label}, saying why`, () => {
      const result = parseImport(text, size);
      expect(result.ok).toBe(false);
      expect(!result.ok && result.reason).toMatch(/^That /);
    });
  }

  it("adds what is new or newer, and leaves what is already here", () => {
    const here = [conversation];
    const incoming = [conversation, { ...conversation, id: "c2" }, { ...conversation, updated: 11, title: "Newer" }];
    expect(mergeImport(here, incoming).map((each) => [each.id, each.title])).toEqual([["c2", "Hello"], ["c1", "Newer"]]);
  });
});
