"""Waiting on an outcome in a test: poll a condition with a bound, never judge after a fixed sleep.

A bound is liveness only, with a margin a loaded 2-core machine cannot use up; a count of events in
a fixed slice of wall time is what a slow box misses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], *, within: float, what: str) -> None:
    """Return once `condition()` holds; fail, saying `what` never happened, after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {within} s"
        await asyncio.sleep(0.005)
