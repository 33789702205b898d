"""Progress lines on stderr for the long steps (building, fetching, loading), so nobody stares at silence."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``llama-direct: <step>: <detail>`` lines, rate-limited so a fast loop does not flood."""

    def __init__(self, step: str, *, min_interval: float = 2.0, delay: float = 0.0, stream=None) -> None:
        """`delay`: say nothing (unless forced) until the step has taken this long, so a quick one is silent."""
        self.step = step
        self.min_interval = min_interval
        self.delay = delay
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last = 0.0

    def say(self, detail: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (now - self._last < self.min_interval or now - self.started < self.delay):
            return
        self._last = now
        elapsed = now - self.started
        print(f"llama-direct: {self.step}: {detail} ({elapsed:.0f}s)", file=self.stream, flush=True)
