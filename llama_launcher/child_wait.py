"""Waiting for a child process to exit, or for a stop, without polling: pidfds and one `select`.

`subprocess.Popen.wait(timeout)` polls: it calls `waitpid(WNOHANG)` between sleeps that start at
half a millisecond and grow to 50 ms, so the gate's supervisor, looping on `wait(0.1)`, woke
about 80 times a second and spent 6 to 7 ms of CPU a second on a stack where nothing happened
(issue 24). A pidfd (Linux 5.3) becomes readable when its process exits, and `StopEvent` is a
`threading.Event` with a pipe that becomes readable when it is set: one `select` over both sleeps
until one of them happens, and costs nothing meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence

log = logging.getLogger(__name__)

FALLBACK_POLL_SECONDS = 1.0
"""Where a kernel has no pidfd (before 5.3, or a sandbox that refuses it): a slow poll still costs
about nothing, and a child's death is then noticed within a second instead of at once."""

Child = subprocess.Popen[bytes]


class StopEvent(threading.Event):
    """A `threading.Event` that `select` can wait on as well: `set` also writes a byte to a pipe.

    Setting it from a signal handler is safe: the write never blocks (one byte is enough, so a
    full pipe is no loss), and the flag is set before the byte is written, so a waiter woken by the
    byte always sees it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        weakref.finalize(self, _close_all, self._read, self._write)

    def fileno(self) -> int:
        """Readable once the event is set, until it is cleared."""
        return self._read

    def set(self) -> None:
        super().set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, b"\0")

    def clear(self) -> None:
        super().clear()
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass


def _close_all(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def wait_for_exit(
    children: Sequence[Child], stop: threading.Event, timeout: float | None = None
) -> Child | None:
    """The first of `children` to exit (reaped: its `returncode` is set), or None once `stop` is set
    or `timeout` seconds have passed.

    Blocks in `select` on each child's pidfd and, for a `StopEvent`, its pipe: no wakeup until one of
    them is ready. A plain `threading.Event` cannot wake a `select`, so it is looked at every
    `FALLBACK_POLL_SECONDS`, as is a child that has no pidfd.
    """
    watched = [stop.fileno()] if isinstance(stop, StopEvent) else []
    polling = not watched
    opened: list[int] = []
    try:
        for child in children:
            if child.poll() is not None:
                return child
            pidfd = _pidfd(child)
            if pidfd is None:
                if child.poll() is not None:
                    return child
                polling = True
            else:
                opened.append(pidfd)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            step = min(FALLBACK_POLL_SECONDS, left if left is not None else math.inf) if polling else left
            select.select([*opened, *watched], [], [], step)
            for child in children:
                if child.poll() is not None:
                    return child
        return None
    finally:
        _close_all(*opened)


def _pidfd(child: Child) -> int | None:
    """A pidfd for `child`, or None where the kernel has none to give.

    A child reaped meanwhile by another thread's `poll` has no pid left to open (ESRCH): None too,
    and the caller's next `poll` reads its code. A zombie still has its pid, so one that exited
    unreaped gets a pidfd that is readable at once.
    """
    try:
        return os.pidfd_open(child.pid)
    except ProcessLookupError:
        return None
    except OSError as error:  # ENOSYS, EPERM in a sandbox
        log.debug("no pidfd (%s); watching child processes by a slow poll", error)
        return None
