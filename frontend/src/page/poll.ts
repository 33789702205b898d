/**
 * A poll that never crowds the server: the next call starts `intervalMs` after the previous one
 * ended, so a slow answer cannot stack calls up, and `stop` ends it for good.
 *
 * The page polled `/v1/models` every 400 ms for as long as a reply ran: 985 of a 7-minute
 * session's 1,057 log lines were those polls. Now it asks every 2 s while a reply waits for its
 * first token, and not at all once tokens flow (the model is loaded by then).
 */

export const POLL_MS = 2000;

/** What `setTimeout` and `clearTimeout` are to the poll; tests pass fakes. */
export interface PollTimers {
  set(callback: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

const GLOBAL_TIMERS: PollTimers = {
  set: (callback, ms) => setTimeout(callback, ms),
  clear: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** Call `tick` now, then `intervalMs` after each call settles, until the returned function is called. */
export function pollEvery(
  tick: () => Promise<void>,
  intervalMs: number = POLL_MS,
  timers: PollTimers = GLOBAL_TIMERS,
): () => void {
  let stopped = false;
  let handle: unknown = null;
  const run = (): void => {
    handle = null;
    void tick()
      .catch(() => undefined)
      .finally(() => {
        if (!stopped) handle = timers.set(run, intervalMs);
      });
  };
  run();
  return () => {
    stopped = true;
    if (handle !== null) timers.clear(handle);
    handle = null;
  };
}

const TOKEN_EVENTS = new Set(["text_delta", "reasoning_start", "reasoning_delta", "tool_start"]);

/** Whether a reply's event means tokens flow: the model answers, so nothing about it needs polling. */
export function tokensFlow(event: { type: string }): boolean {
  return TOKEN_EVENTS.has(event.type);
}
