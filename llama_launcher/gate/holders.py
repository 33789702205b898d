"""Which upstream holds a conversation's stream, so its resume and cancel go back to that one.

A grant is minted before the gate chooses an upstream, so the grant cannot say; the gate records
the choice when it routes a chat that names a conversation. In this process's memory (bounded, each
entry forgotten after `HOLD_SECONDS`), or in Redis when several gates share an audience: then a
resume that arrives at another gate finds the same upstream. Upstreams are named by `Member.key`,
a digest of their address that every gate computes alike, never the address itself.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)

HOLD_SECONDS = 3600
"""llama-server keeps a finished stream for resuming for a while; an hour covers any real pause."""
MAX_HELD = 65536
"""Conversations remembered in memory at once; the oldest is forgotten first (its resume then goes
to any upstream serving the model, which answers 404 for a stream it never held)."""
KEY_PREFIX = "ld:holder:"


class Holders(Protocol):
    async def get(self, conversation: str) -> str | None: ...

    async def put(self, conversation: str, member: str) -> None: ...


class MemoryHolders:
    """conversation -> member key, in this process, oldest first."""

    def __init__(self, *, limit: int = MAX_HELD, hold: float = HOLD_SECONDS) -> None:
        self._held: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._limit = limit
        self._hold = hold

    async def get(self, conversation: str) -> str | None:
        found = self._held.get(conversation)
        if found is None:
            return None
        member, until = found
        if until < time.monotonic():
            del self._held[conversation]
            return None
        return member

    async def put(self, conversation: str, member: str) -> None:
        self._held.pop(conversation, None)
        self._held[conversation] = (member, time.monotonic() + self._hold)
        while len(self._held) > self._limit:
            self._held.popitem(last=False)


class RedisHolders:
    """conversation -> member key in Redis, shared by every gate of one audience.

    A failure to record is logged and the stream still runs (only its resume may miss); a failure
    to read routes the resume like a new request. Neither weakens a check: the token was already
    spent in Redis, which is where a dead Redis is refused.
    """

    def __init__(self, client: redis.asyncio.Redis, audience: str, *, hold: int = HOLD_SECONDS) -> None:
        self._redis = client
        self._prefix = f"{KEY_PREFIX}{audience}:"
        self._hold = hold

    async def get(self, conversation: str) -> str | None:
        from redis.exceptions import RedisError

        try:
            value = await self._redis.get(self._prefix + conversation)
        except (RedisError, OSError):
            log.warning("holder lookup failed: Redis unreachable")
            return None
        return value.decode("ascii") if isinstance(value, bytes) else None

    async def put(self, conversation: str, member: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.set(self._prefix + conversation, member.encode("ascii"), ex=self._hold)
        except (RedisError, OSError):
            log.warning("holder not recorded: Redis unreachable")
