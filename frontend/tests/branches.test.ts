/** Regenerate keeps the earlier answer as a branch; flipping shows it again with what followed it. */
import { describe, expect, it } from "vitest";
import { branchPosition, flipTo, forkAt } from "../src/page/branches.ts";
import type { TurnData } from "../src/page/conversation.ts";

const turn = (text: string, reply: string): TurnData => ({ text, image: null, reply });
const talk: TurnData[] = [turn("one", "first"), turn("two", "second"), turn("three", "third")];

describe("forkAt", () => {
  it("keeps the answer and the turns after it as a branch, and leaves an empty answer to fill", () => {
    const forked = forkAt(talk, 1);
    expect(forked).toHaveLength(2);
    expect(forked[0]).toEqual(talk[0]);
    expect(forked[1]).toEqual({
      text: "two",
      image: null,
      reply: "",
      branches: [{ reply: "second", later: [turn("three", "third")] }, { reply: "", later: [] }],
      branch: 1,
    });
    expect(branchPosition(forked[1] as TurnData)).toEqual({ index: 1, count: 2 });
  });

  it("adds a third answer after the second, keeping both", () => {
    const again = forkAt([talk[0] as TurnData, { ...(forkAt(talk, 1)[1] as TurnData), reply: "second again" }], 1);
    const last = again[1] as TurnData;
    expect(last.branches?.map((each) => each.reply)).toEqual(["second", "second again", ""]);
    expect(last.branch).toBe(2);
  });

  it("keeps no branch for an answer that failed before any text with nothing after it", () => {
    const failed = [turn("one", "first"), turn("two", "")];
    expect(forkAt(failed, 1)).toEqual(failed);
    expect(branchPosition(forkAt(failed, 1)[1] as TurnData)).toBeNull();
  });
});

describe("flipTo", () => {
  it("flips back to the earlier answer with its later turns, and forward again", () => {
    const regenerated = forkAt(talk, 1);
    regenerated[1] = { ...(regenerated[1] as TurnData), reply: "new second" };
    const back = flipTo(regenerated, 1, 0);
    expect(back.map((each) => each.reply)).toEqual(["first", "second", "third"]);
    expect(branchPosition(back[1] as TurnData)).toEqual({ index: 0, count: 2 });
    const forward = flipTo(back, 1, 1);
    expect(forward.map((each) => each.reply)).toEqual(["first", "new second"]);
    expect(forward[1]?.branches?.[0]).toEqual({ reply: "second", later: [turn("three", "third")] });
  });

  it("changes nothing for a turn without branches or a branch that is not there", () => {
    expect(flipTo(talk, 1, 0)).toEqual(talk);
    expect(flipTo(forkAt(talk, 1), 1, 5)).toEqual(forkAt(talk, 1));
  });
});
