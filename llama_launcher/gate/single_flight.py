"""One run of a coroutine at a time, which every caller arriving meanwhile joins.

Why: a pull or a health question that is already out answers everyone who asks while it runs
(a burst of requests costs the upstream or the broker one exchange, not one each), and it is
shielded, so a caller that goes away (its client hung up) does not cancel the answer the others
wait for. Used for the gate's key pulls and its upstream health and `/props` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._task: asyncio.Task[T] | None = None

    async def join(self, start: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of the run under way, or of one started now with `start()`."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(start())
        return await asyncio.shield(self._task)

    async def cancel(self) -> None:
        """Stop a run under way (at shutdown, before the client it uses is closed) and wait for it."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
