// @vitest-environment jsdom
/** One reply's view: the reasoning label's end, a reply made of reasoning alone, the actions offered. */
import { describe, expect, it } from "vitest";
import { ReplyView } from "../src/page/reply.ts";
import type { UIEvent } from "../src/shape.ts";

const finish = { type: "finish", lane: "direct", finish_reason: "stop" } as unknown as UIEvent;
const actions = (view: ReplyView) => Array.from(view.root.querySelectorAll<HTMLElement>(".actions button")).map((b) => b.dataset.action);

function play(view: ReplyView, events: unknown[]): void {
  for (const event of events) view.apply(event as UIEvent);
}

describe("ReplyView", () => {
  it("ends the reasoning label in 'Thought for N s' when stopped mid-thought", () => {
    const view = new ReplyView();
    play(view, [{ type: "reasoning_start" }, { type: "reasoning_delta", text: "hmm" }, { type: "abort" }]);
    expect(view.root.querySelector("summary")?.textContent).toMatch(/^Thought for \d+\.\d s$/);
    expect(view.root.querySelector(".status-line")?.textContent).toBe("Stopped.");
    expect(view.state).toBe("stopped");
  });

  it("shows a reply that landed entirely in reasoning as the reply", () => {
    const view = new ReplyView();
    play(view, [{ type: "reasoning_start" }, { type: "reasoning_delta", text: "The answer is **4**." }, { type: "reasoning_end" }, finish]);
    expect(view.root.querySelector("details.think")).toBeNull();
    expect(view.root.querySelector(".markdown strong")?.textContent).toBe("4");
    expect(view.content).toBe("The answer is **4**.");
    expect(actions(view)).toEqual(["copy", "regenerate"]);
  });

  it("keeps a reply cut off mid-thought as reasoning, and says why", () => {
    const view = new ReplyView();
    const cut = { ...finish, finish_reason: "length" } as UIEvent;
    play(view, [{ type: "reasoning_start" }, { type: "reasoning_delta", text: "Let me see" }, { type: "reasoning_end" }, cut]);
    expect(view.root.querySelector("details.think .body")?.textContent).toBe("Let me see");
    expect(view.root.querySelector(".status-line")?.textContent).toBe("The reply reached its length limit while thinking.");
  });

  it("keeps reasoning in its block when text follows it", () => {
    const view = new ReplyView();
    play(view, [{ type: "reasoning_start" }, { type: "reasoning_delta", text: "think" }, { type: "text_delta", text: "4" }, finish]);
    expect(view.root.querySelector("details.think .body")?.textContent).toBe("think");
    expect(view.content).toBe("4");
  });

  it("renders the text as Markdown and shows the lane in words", () => {
    const view = new ReplyView();
    play(view, [{ type: "text_delta", text: "# Hi\n\n- a" }, { type: "text_delta", text: "\n- b" }, finish]);
    expect(view.root.querySelector("h1")?.textContent).toBe("Hi");
    expect(view.root.querySelectorAll("li li, .markdown li").length).toBe(2);
    const tag = view.root.querySelector<HTMLElement>(".lane-tag");
    expect(tag?.textContent).toBe("Direct");
    expect(tag?.title).toContain("straight from the model server");
  });

  it("offers Retry after an error before any text, Copy and Regenerate after one with text", () => {
    const failed = new ReplyView();
    play(failed, [{ type: "error", code: "server_error", message: "The model server failed." }]);
    expect(failed.state).toBe("error");
    expect(actions(failed)).toEqual(["retry"]);
    const partial = new ReplyView();
    play(partial, [{ type: "text_delta", text: "par" }, { type: "error", code: "server_error", message: "broke" }]);
    expect(actions(partial)).toEqual(["copy", "regenerate"]);
  });

  it("measures the time to its first token, once, from text or reasoning", () => {
    const view = new ReplyView();
    play(view, [{ type: "progress", processed: 1, total: 2 }]);
    expect(view.firstTokenSeconds).toBeNull();
    play(view, [{ type: "reasoning_start" }, { type: "reasoning_delta", text: "hmm" }]);
    const first = view.firstTokenSeconds;
    expect(first).toBeGreaterThanOrEqual(0);
    play(view, [{ type: "text_delta", text: "Hi" }, finish]);
    expect(view.firstTokenSeconds).toBe(first);
  });

  it("settles a streamed reply without rebuilding the blocks already shown", async () => {
    const view = new ReplyView();
    play(view, [{ type: "text_delta", text: "# Title\n\nFirst paragraph.\n\nSecond" }]);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const heading = view.root.querySelector("h1");
    expect(heading?.textContent).toBe("Title");
    play(view, [{ type: "text_delta", text: " paragraph." }, finish]);
    expect(view.root.querySelector("h1")).toBe(heading);
    expect(view.root.querySelectorAll("p")[1]?.textContent).toBe("Second paragraph.");
  });
});
