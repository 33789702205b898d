// @vitest-environment jsdom
/** Incremental rendering: many tokens, one render per frame, only the changed blocks rebuilt. */
import { describe, expect, it } from "vitest";
import { keptBlocks, MarkdownView } from "../src/page/markdown_view.ts";

function manual(): { schedule: (callback: () => void) => void; frame: () => void; waiting: () => number } {
  const queue: (() => void)[] = [];
  return {
    schedule: (callback) => queue.push(callback),
    frame: () => queue.splice(0).forEach((callback) => callback()),
    waiting: () => queue.length,
  };
}

describe("keptBlocks", () => {
  const raw = (...items: string[]) => items.map((item) => ({ raw: item }));
  it("keeps the unchanged prefix and rebuilds from the first change", () => {
    expect(keptBlocks(raw("a", "b"), raw("a", "bc"))).toBe(1);
    expect(keptBlocks(raw("a", "b"), raw("a", "b", "c"))).toBe(2);
    expect(keptBlocks(raw("a", "b"), raw("a", "b"))).toBe(2);
    expect(keptBlocks(raw(), raw("a"))).toBe(0);
    expect(keptBlocks(raw("a", "b"), raw("x"))).toBe(0);
  });
});

describe("MarkdownView", () => {
  it("renders once per frame however many tokens arrive", () => {
    const clock = manual();
    let renders = 0;
    const view = new MarkdownView(() => (renders += 1), clock.schedule);
    for (const token of ["He", "llo", " **wor", "ld**"]) view.append(token);
    expect(clock.waiting()).toBe(1);
    expect(view.root.textContent).toBe("");
    clock.frame();
    expect(renders).toBe(1);
    expect(view.root.querySelector("strong")?.textContent).toBe("world");
  });

  it("rebuilds only the last block while it streams, keeping earlier nodes", () => {
    const clock = manual();
    const view = new MarkdownView(() => undefined, clock.schedule);
    view.append("# Head\n\nFirst paragraph.\n\nSecond");
    clock.frame();
    const head = view.root.querySelector("h1");
    const first = view.root.querySelectorAll("p")[0];
    view.append(" grows, word by word");
    clock.frame();
    expect(view.lastRebuilt).toBe(1);
    expect(view.root.querySelector("h1")).toBe(head);
    expect(view.root.querySelectorAll("p")[0]).toBe(first);
    expect(view.root.querySelectorAll("p")[1]?.textContent).toBe("Second grows, word by word");
  });

  it("turns an open fence into a code block as it streams, and a list item into a list", () => {
    const clock = manual();
    const view = new MarkdownView(() => undefined, clock.schedule);
    view.append("```js\nconst a");
    clock.frame();
    expect(view.root.querySelector("code")?.textContent).toBe("const a");
    view.append(" = 1;\n```\n\n- one\n- two");
    clock.frame();
    expect(view.root.querySelectorAll(".codeblock").length).toBe(1);
    expect(view.root.querySelectorAll("li").length).toBe(2);
    expect(view.text).toBe("```js\nconst a = 1;\n```\n\n- one\n- two");
  });

  it("renders a reference link whose definition comes later", () => {
    const clock = manual();
    const view = new MarkdownView(() => undefined, clock.schedule);
    view.append("See [the docs][1].\n\n");
    clock.frame();
    view.append("[1]: https://example.com/docs\n");
    view.render(true);
    expect(view.root.querySelector("a")?.getAttribute("href")).toBe("https://example.com/docs");
  });
});
