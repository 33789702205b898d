"""The I/O shell around `stream_ledger`: timers for the resume window, and the stops it sends.

The request half calls `open` once per chat or resume (which may refuse it), `held_by` when an
upstream took it, and `close` when its client connection is done with it; a `DELETE /v1/stream`
calls `cancelled`. An orphan's window is one `call_later`; when it fires, the stream is stopped on
the upstream that holds it (`stream_stop`), so a tab closed mid-reply stops costing llama-server
CPU `resume_window` seconds later. Stops run as tasks the gate's close waits for no longer than it
takes to cancel them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Sequence
from typing import Any

from llama_direct.tokens import Claims
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.pool import Member
from llama_launcher.gate.scope import Route
from llama_launcher.gate.stream_ledger import Orphan, Stream, StreamLedger
from llama_launcher.gate.stream_stop import reaches_children, stop_on_children, stop_stream, stream_path

log = logging.getLogger(__name__)


class StreamWatch:
    """One gate's streams: the per-user cap, and the resume window of each orphaned conversation."""

    def __init__(self, config: GateConfig) -> None:
        self.ledger: StreamLedger[Member] = StreamLedger(
            limit=config.streams_per_user, uncapped=frozenset(config.uncapped_users), window=config.resume_window
        )
        self._timers: set[asyncio.TimerHandle] = set()
        self._stops: set[asyncio.Task[Any]] = set()

    def open(self, claims: Claims, route: Route) -> Stream[Member] | None:
        """A chat or resume is counted for its `sub` (or refused, 429), against the user's own limit when
        the grant carries one (`grant.streams`), else the gate's; a cancel is no stream (None)."""
        if route.lane.conversation == "stops":
            return None
        return self.ledger.open(claims.sub, route.conversation_id, claims.grant.streams)

    @staticmethod
    def held_by(stream: Stream[Member] | None, member: Member) -> None:
        if stream is not None:
            stream.holder = member

    def close(self, stream: Stream[Member] | None, *, finished: bool) -> None:
        """The client connection is done with `stream`; a conversation it left unfinished starts its window."""
        if stream is None:
            return
        loop = asyncio.get_running_loop()
        orphan = self.ledger.close(stream, finished=finished, now=loop.time())
        if orphan is not None:
            self._timers.add(loop.call_later(self.ledger.window, self._expire))

    def cancelled(self, route: Route, members: Sequence[Member]) -> None:
        """A `DELETE /v1/stream` from the conversation's owner: drop its window, and behind a router
        stop it on the children too, which the router's own `DELETE` does not reach (`stream_stop`)."""
        self.ledger.cancelled(route.conversation_id)
        if route.conversation_id is None:
            return
        for member in members:
            if member.health.router:
                self._spawn(stop_on_children_of(member, route.conversation_id))

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        self._timers = {timer for timer in self._timers if timer.when() > loop.time()}
        for orphan in self.ledger.expire(loop.time()):
            log.info("a resumable stream nobody read for %.0f s: stopping it", self.ledger.window)
            self._spawn(stop_orphan(orphan))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    async def close_all(self) -> None:
        """The gate is stopping: no window fires after it, and no stop is left half sent."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in list(self._stops):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def stop_orphan(orphan: Orphan[Member]) -> None:
    member = orphan.holder
    await stop_stream(member.upstream, orphan.conversation, router=member.health.router)


async def stop_on_children_of(member: Member, conversation: str) -> None:
    if reaches_children(member.upstream):
        await stop_on_children(member.upstream, stream_path(conversation))


def reset_on_close(transport: asyncio.BaseTransport) -> None:
    """Make the coming close a reset (SO_LINGER 0): a client cut for not reading is not fed the
    megabytes still in the kernel's send buffer, which would hold them until it reads or times out."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
