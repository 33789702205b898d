// @vitest-environment jsdom
/** The answer switcher and what a paste or drop carries. */
import { describe, expect, it } from "vitest";
import { branchNav } from "../src/page/actions.ts";
import { imageIn } from "../src/page/composer.ts";

describe("branchNav", () => {
  it("shows where the answer stands and offers only the ways that exist", () => {
    const first = branchNav(0, 2);
    expect(first.querySelector(".branch-count")?.textContent).toBe("1/2");
    const [prev, next] = Array.from(first.querySelectorAll("button"));
    expect([prev?.dataset.action, prev?.disabled, next?.dataset.action, next?.disabled]).toEqual(["branch-prev", true, "branch-next", false]);
    const last = branchNav(2, 3);
    expect(last.querySelector(".branch-count")?.textContent).toBe("3/3");
    expect(Array.from(last.querySelectorAll("button")).map((b) => b.disabled)).toEqual([false, true]);
  });
});

describe("imageIn", () => {
  it("finds the first image among a paste's files, and nothing else", () => {
    const text = new File(["x"], "notes.txt", { type: "text/plain" });
    const image = new File(["x"], "shot.png", { type: "image/png" });
    expect(imageIn({ files: [text, image] } as unknown as DataTransfer)).toBe(image);
    expect(imageIn({ files: [text] } as unknown as DataTransfer)).toBeUndefined();
    expect(imageIn(null)).toBeUndefined();
  });
});
