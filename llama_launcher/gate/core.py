"""What every connection of one gate shares: its settings, the upstream, the keys and the token check.

A request's token is verified here (`authorize`) before its scope and body are looked at, and one
use is spent (`spend`) only once the request is known to be forwarded.

Uses are counted in this process's memory, or in Redis (`shared`) when several gates share an
audience; then a gate restart no longer refuses older tokens, Redis's own restart does
(`llama_direct.shared_replay`).
"""

from __future__ import annotations

import math
import time
from typing import Protocol

from llama_direct.refusals import (
    MalformedToken,
    MissingToken,
    TokenRevoked,
    TokenSpent,
    UnknownKey,
)
from llama_direct.replay import MemoryReplayStore
from llama_direct.shared_replay import RedisReplayStore
from llama_direct.tokens import LEEWAY_SECONDS, Claims, verify
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.health import Health
from llama_launcher.gate.http1 import (
    Header,
)
from llama_launcher.gate.keyset import KeySet
from llama_launcher.gate.scope import RequestHead
from llama_launcher.gate.shaping import ShapingPolicy
from llama_launcher.gate.upstream import (
    Upstream,
)


class Connection(Protocol):
    """What the gate needs of a live client connection: a way to end it when the gate stops."""

    def shutdown(self) -> None: ...


class Gate:
    """State shared by every connection of one gate process."""

    def __init__(
        self, config: GateConfig, upstream: Upstream, keyset: KeySet, *, started_at: float | None = None,
        shared: RedisReplayStore | None = None,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.keyset = keyset
        self.replay = MemoryReplayStore()
        self.shared = shared
        self.not_issued_before: int | None = (
            None if shared is not None else math.floor(time.time() if started_at is None else started_at)
        )
        self.health = Health(upstream, config.model)
        self.connections: set[Connection] = set()
        self.allowed_origins = frozenset(config.allowed_origins)
        self.lane_prefix = (config.lane_prefix + "/").encode()
        self._policies = {
            vision: ShapingPolicy(max_body_bytes=config.max_body_bytes, vision=vision) for vision in (False, True)
        }

    @property
    def policy(self) -> ShapingPolicy:
        return self._policies[self.health.vision]

    async def authorize(self, head: RequestHead) -> Claims:
        """The verified, unrevoked claims of the request's bearer token (uses are spent later)."""
        token = _bearer_token(head.headers)
        try:
            claims = self._verify(token)
        except UnknownKey:
            await self.keyset.refresh_for_unknown_kid()
            claims = self._verify(token)
        if self.keyset.revocations.is_revoked(claims):
            raise TokenRevoked()
        return claims

    def _verify(self, token: str) -> Claims:
        return verify(
            token,
            keys=self.keyset.keys,
            audience=self.config.audience,
            issuer=self.config.issuer,
            now=time.time(),
            not_issued_before=self.not_issued_before,
        )

    async def spend(self, claims: Claims) -> None:
        if self.shared is not None:
            await self.shared.spend(claims)
            return
        if not self.replay.consume(claims.jti, claims.grant.uses, claims.exp + LEEWAY_SECONDS, time.time()):
            raise TokenSpent()


def _bearer_token(headers: list[Header]) -> str:
    """The token of the one `Authorization: Bearer` header; nothing else is ever read as a token."""
    values = [value for name, value in headers if name == b"authorization"]
    if not values:
        raise MissingToken()
    scheme, _, token = values[0].partition(b" ")
    if len(values) > 1 or scheme.lower() != b"bearer" or not token or b" " in token:
        raise MalformedToken()
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedToken() from None
