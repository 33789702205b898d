/**
 * Keeping the newest reply in view: while the user is at the bottom of the conversation, new text
 * scrolls it along; scrolling up (or a wheel or key toward older text) stops that, and a
 * "Jump to latest" button brings it back. The conversation scrolls in its own pane above the
 * composer, so "the bottom" is always above the message box.
 */

export interface ScrollMetrics {
  scrollTop: number;
  clientHeight: number;
  scrollHeight: number;
}

/** Within this many pixels of the end counts as "at the bottom" (rounding, a last line's margin). */
export const BOTTOM_SLACK_PX = 48;

export function atBottom(metrics: ScrollMetrics, slack: number = BOTTOM_SLACK_PX): boolean {
  return metrics.scrollHeight - metrics.scrollTop - metrics.clientHeight <= slack;
}

export type FollowInput =
  | { kind: "scrolled"; metrics: ScrollMetrics; previousTop: number }
  | { kind: "up-intent" }
  | { kind: "jump" }
  | { kind: "content"; metrics: ScrollMetrics };

export interface FollowState {
  following: boolean;
  /** Whether the "Jump to latest" button is shown. */
  showJump: boolean;
}

export interface FollowStep {
  state: FollowState;
  /** Scroll the pane to its end now. */
  scrollToEnd: boolean;
}

/** The pure rule: what a scroll, an intent, a jump or new content does to the follow. */
export function follow(state: FollowState, input: FollowInput): FollowStep {
  switch (input.kind) {
    case "up-intent":
      return { state: { following: false, showJump: state.showJump }, scrollToEnd: false };
    case "jump":
      return { state: { following: true, showJump: false }, scrollToEnd: true };
    case "scrolled": {
      const bottom = atBottom(input.metrics);
      if (bottom) return { state: { following: true, showJump: false }, scrollToEnd: false };
      const movedUp = input.metrics.scrollTop < input.previousTop;
      const following = state.following && !movedUp;
      return { state: { following, showJump: !following }, scrollToEnd: false };
    }
    case "content":
      if (state.following) return { state: { following: true, showJump: false }, scrollToEnd: true };
      return { state: { following: false, showJump: !atBottom(input.metrics) }, scrollToEnd: false };
  }
}

const UP_KEYS = new Set(["PageUp", "ArrowUp", "Home"]);

/** The rule bound to a scrolling pane and its button. */
export class ScrollFollow {
  private state: FollowState = { following: true, showJump: false };
  private lastTop = 0;

  constructor(
    private readonly pane: HTMLElement,
    private readonly jump: HTMLButtonElement,
  ) {
    pane.addEventListener("scroll", () => {
      const previousTop = this.lastTop;
      this.lastTop = pane.scrollTop;
      this.step({ kind: "scrolled", metrics: pane, previousTop });
    }, { passive: true });
    pane.addEventListener("wheel", (event) => {
      if (event.deltaY < 0) this.step({ kind: "up-intent" });
    }, { passive: true });
    pane.addEventListener("touchmove", () => this.step({ kind: "up-intent" }), { passive: true });
    pane.addEventListener("keydown", (event) => {
      if (UP_KEYS.has(event.key)) this.step({ kind: "up-intent" });
    });
    jump.addEventListener("click", () => this.step({ kind: "jump" }));
    // The pane shrinks when the message box grows or the keyboard opens: keep the end in view.
    if (typeof ResizeObserver === "function") new ResizeObserver(() => this.update()).observe(pane);
  }

  get following(): boolean {
    return this.state.following;
  }

  /** Content grew or changed: follow it if following. */
  update(): void {
    this.step({ kind: "content", metrics: this.pane });
  }

  /** A new turn starts: follow again, as a sent message means "show me the answer". */
  resume(): void {
    this.step({ kind: "jump" });
  }

  private step(input: FollowInput): void {
    const next = follow(this.state, input);
    this.state = next.state;
    this.jump.hidden = !next.state.showJump;
    if (next.scrollToEnd) {
      this.pane.scrollTop = this.pane.scrollHeight;
      this.lastTop = this.pane.scrollTop;
    }
  }
}
