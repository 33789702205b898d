"""Who still uses a lane: one connection per app process on the lane's lease socket.

A lane started from an app's code (`llama_launcher.lane`) serves every worker of that app, and must
stop when the last of them is gone, however it goes: a worker that exits, crashes or is SIGKILLed
closes its connection in the kernel. So the lane needs no parent-death signal of its own (one tied to
the thread that spawned it would stop it when a worker thread ends) and no polling: the lane process
waits on the sockets, and stops when none is left.

The protocol, line by line: the lane greets each lease it counts with `lease`; an app that lets go
sends `release` and is told `last` (the lane stops now) or `held` (others still use it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

GREETING = b"lease\n"
RELEASE = b"release\n"
LAST = b"last\n"
HELD = b"held\n"


def bind_lease_socket(path: Path) -> socket.socket:
    """A listening unix socket at `path`, 0600 from the moment it exists."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(previous)
    sock.listen(64)
    return sock


class Leases:
    """Counts the app processes holding the lane; `on_empty` runs once, when the last one lets go."""

    def __init__(self, listener: socket.socket, first: socket.socket, on_empty: Callable[[], None]) -> None:
        self._listener = listener
        self._on_empty = on_empty
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._held: set[socket.socket] = set()
        self._add(first, greet=False)  # its holder learns the lane is up from the ready document
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="lane-leases", daemon=True)

    @property
    def count(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop counting (the lane is stopping, for this reason or another): every holder sees its lease end."""
        if self._wake_w < 0:
            return
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(5.0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1

    def _add(self, conn: socket.socket, greet: bool) -> None:
        conn.setblocking(True)
        if greet:
            try:
                conn.sendall(GREETING)
            except OSError:
                conn.close()
                return
        self._held.add(conn)
        self._selector.register(conn, selectors.EVENT_READ)

    def _run(self) -> None:
        try:
            while self._held:
                for key, _ in self._selector.select():
                    if key.fileobj == self._wake_r:
                        return
                    if key.fileobj is self._listener:
                        with contextlib.suppress(OSError):
                            self._add(self._listener.accept()[0], greet=True)
                    else:
                        self._end(key.fileobj)  # type: ignore[arg-type]  # only sockets are registered besides
            self._listener.close()  # first, so nobody is greeted by a lane that is stopping
            log.info("event=lane_unused stopping")
            self._on_empty()
        finally:
            self._shut()

    def _end(self, conn: socket.socket) -> None:
        """A lease's holder spoke (a release) or went away (EOF, or an error): either way it is gone."""
        try:
            said = conn.recv(64)
        except OSError:
            said = b""
        self._selector.unregister(conn)
        self._held.discard(conn)
        if said.startswith(RELEASE):
            with contextlib.suppress(OSError):
                conn.sendall(HELD if self._held else LAST)
        conn.close()

    def _shut(self) -> None:
        for conn in self._held:
            conn.close()
        self._held.clear()
        self._listener.close()
        self._selector.close()
