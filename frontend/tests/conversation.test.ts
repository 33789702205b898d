/** What each request sends, derived from the turns: the base of edit, regenerate and retry. */
import { describe, expect, it } from "vitest";
import { historyFor, type TurnData } from "../src/page/conversation.ts";

const turns: TurnData[] = [
  { text: "one", image: null, reply: "first" },
  { text: "lost", image: null, reply: "" },
  { text: "look", image: "data:image/png;base64,AA", reply: "a dot" },
  { text: "three", image: null, reply: "" },
];

describe("historyFor", () => {
  it("sends the earlier answered turns, then this turn's message", () => {
    expect(historyFor(turns, 3)).toEqual([
      { role: "user", content: "one" },
      { role: "assistant", content: "first" },
      { role: "user", content: [{ type: "text", text: "look" }, { type: "image_url", image_url: { url: "data:image/png;base64,AA" } }] },
      { role: "assistant", content: "a dot" },
      { role: "user", content: "three" },
    ]);
  });

  it("regenerates or edits a turn with only what came before it", () => {
    expect(historyFor(turns, 0)).toEqual([{ role: "user", content: "one" }]);
    expect(historyFor(turns, 1).map((m) => m.content)).toEqual(["one", "first", "lost"]);
  });

  it("puts a system prompt first when there is one", () => {
    expect(historyFor(turns, 0, "Be brief.")[0]).toEqual({ role: "system", content: "Be brief." });
    expect(historyFor(turns, 0, "  ")).toHaveLength(1);
  });
});
