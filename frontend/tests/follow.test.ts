/** The scroll-follow rule: follow at the bottom, stop on scrolling up, come back with "Jump to latest". */
import { describe, expect, it } from "vitest";
import { atBottom, follow, type FollowState } from "../src/page/follow.ts";

const FOLLOWING: FollowState = { following: true, showJump: false };
const metrics = (scrollTop: number, scrollHeight = 2000, clientHeight = 500) => ({ scrollTop, scrollHeight, clientHeight });

describe("atBottom", () => {
  it("counts the last few pixels as the bottom", () => {
    expect(atBottom(metrics(1500))).toBe(true);
    expect(atBottom(metrics(1460))).toBe(true);
    expect(atBottom(metrics(1400))).toBe(false);
    expect(atBottom(metrics(0, 300))).toBe(true);
  });
});

describe("follow", () => {
  it("follows new content while at the bottom", () => {
    const step = follow(FOLLOWING, { kind: "content", metrics: metrics(1500, 2100) });
    expect(step).toEqual({ state: FOLLOWING, scrollToEnd: true });
  });

  it("stops when the user scrolls up, and shows the jump button", () => {
    const up = follow(FOLLOWING, { kind: "scrolled", metrics: metrics(1200), previousTop: 1500 });
    expect(up.state).toEqual({ following: false, showJump: true });
    const more = follow(up.state, { kind: "content", metrics: metrics(1200, 2400) });
    expect(more.scrollToEnd).toBe(false);
    expect(more.state.showJump).toBe(true);
  });

  it("stops on a wheel or key toward older text before any scroll event", () => {
    const step = follow(FOLLOWING, { kind: "up-intent" });
    expect(step.state.following).toBe(false);
    expect(follow(step.state, { kind: "content", metrics: metrics(1500, 2100) }).scrollToEnd).toBe(false);
  });

  it("does not stop when content grows under a following pane (the scroll went down)", () => {
    const step = follow(FOLLOWING, { kind: "scrolled", metrics: metrics(1300, 2200), previousTop: 1200 });
    expect(step.state.following).toBe(true);
  });

  it("comes back with the jump button", () => {
    const step = follow({ following: false, showJump: true }, { kind: "jump" });
    expect(step).toEqual({ state: FOLLOWING, scrollToEnd: true });
  });

  it("follows again when the user scrolls back to the bottom", () => {
    const step = follow({ following: false, showJump: true }, { kind: "scrolled", metrics: metrics(1490), previousTop: 1000 });
    expect(step.state).toEqual(FOLLOWING);
  });
});
