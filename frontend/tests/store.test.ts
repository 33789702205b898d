/** What is read back from IndexedDB is checked, never trusted; titles are short and on one line. */
import { describe, expect, it } from "vitest";
import { titleFor, validConversation } from "../src/page/store.ts";

const good = {
  id: "c1",
  title: "Hello",
  updated: 5,
  turns: [{ text: "Hello", image: null, reply: "Hi" }, { text: "dot", image: "data:image/png;base64,AA", reply: "" }],
  settings: { system: "Be brief.", temperature: "0.2", maxTokens: "" },
};

describe("validConversation", () => {
  it("keeps a well-formed record", () => {
    expect(validConversation(good)).toEqual(good);
  });

  it("fills settings that are missing or of the wrong type with blanks", () => {
    expect(validConversation({ ...good, settings: { system: 3 } })?.settings).toEqual({ system: "", temperature: "", maxTokens: "" });
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
