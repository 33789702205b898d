"""A TCP forwarder for tests: stands in for an SSH tunnel, and counts what reaches the far side.

It runs its own event loop in a thread, forwards each accepted connection to a TCP or unix
target, and records the request line of every connection so a test can assert that a refused
request never reached llama-server. With `record=True` it also keeps every byte each connection
sent on (`sent`), so a test can read what the far side was really given.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class Forwarder:
    def __init__(self, target: tuple[str, int] | str, *, record: bool = False) -> None:
        self.target = target
        self.request_lines: list[bytes] = []
        self.record = record
        self.sent: list[bytearray] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Forwarder:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._close_all)
        self._thread.join(5)

    def _close_all(self) -> None:
        """Close every live connection before the loop stops, so no socket outlives the test."""
        for writer in list(self._writers):
            writer.close()
        self._loop.call_later(0.05, self._loop.stop)

    def requests(self, keep: Callable[[bytes], bool] = lambda line: True) -> list[bytes]:
        return [line for line in list(self.request_lines) if keep(line)]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if isinstance(self.target, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self.target)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        sent = bytearray()
        if self.record:
            self.sent.append(sent)
        first = await reader.read(65536)
        if first:
            self.request_lines.append(first.split(b"\r\n", 1)[0])
            up_writer.write(first)
            if self.record:
                sent += first

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bytearray | None = None) -> None:
            try:
                while data := await src.read(65536):
                    if keep is not None:
                        keep += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer, sent if self.record else None), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
