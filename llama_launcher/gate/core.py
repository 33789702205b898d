"""What every connection of one gate shares: its settings, its upstreams, the keys and the token check.

A request's token is verified here (`authorize`), and one use is spent as soon as its signature,
audience, expiry and the gate's start cut-off pass: before its scope, its body or llama-server are
looked at. Any later refusal, cheap or costly, leaves the use spent, so a refused request can never
be replayed with the same token to make the gate decode its images again.

Uses are counted in this process's memory, or in Redis (`shared`) when several gates share an
audience; then a gate restart no longer refuses older tokens, Redis's own restart does
(`llama_direct.shared_replay`).
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Sequence
from typing import Protocol

from llama_direct.documents import HealthAnswer
from llama_direct.refusals import (
    MalformedToken,
    MissingToken,
    ModelNotLoaded,
    RequestRefusal,
    TokenRevoked,
    TokenSpent,
    UnknownKey,
)
from llama_direct.replay import MemoryReplayStore
from llama_direct.shared_replay import RedisReplayStore
from llama_direct.tokens import LEEWAY_SECONDS, Claims, verify
from llama_launcher.gate.admission import Admission
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.http1 import (
    Header,
)
from llama_launcher.gate.keyset import KeySet
from llama_launcher.gate.load_charges import LoadCharger
from llama_launcher.gate.metrics import BrokerExposition, GateMetrics, MetricsServing
from llama_launcher.gate.pool import Attempts, Member, Pool, shaping_limits
from llama_launcher.gate.scope import Granted, RequestHead, granted_route, metered_lane
from llama_launcher.gate.shaping import ShapingPolicy
from llama_launcher.gate.stream_watch import StreamWatch
from llama_launcher.gate.usage_reports import Metered, UsageReporter


class Connection(Protocol):
    """What the gate needs of a live client connection: a way to end it when the gate stops."""

    def shutdown(self) -> None: ...


class Gate:
    """State shared by every connection of one gate process."""

    def __init__(
        self, config: GateConfig, pool: Pool, keyset: KeySet, *, started_at: float | None = None,
        shared: RedisReplayStore | None = None, metrics: MetricsServing | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.keyset = keyset
        self.replay = MemoryReplayStore()
        self.shared = shared
        self.not_issued_before: int | None = (
            None if shared is not None else start_cut_off(time.time() if started_at is None else started_at)
        )
        self.connections: set[Connection] = set()
        self.streams = StreamWatch(config)
        self.loads = LoadCharger(config.control_socket)
        self.usage = UsageReporter(config.control_socket, config.resume_window)
        self.admission = Admission(config, descriptors=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.allowed_origins = frozenset(config.allowed_origins)
        self.lane_prefix = (config.lane_prefix + "/").encode()
        serving = metrics or MetricsServing()
        self.metrics_token = serving.token
        self.metrics = GateMetrics(per_user=serving.per_user, lane_prefix=config.lane_prefix)
        self.broker_metrics = BrokerExposition(config.control_socket)
        self.metrics.watch_upstreams(lambda: ((m.key, m.health.ready is True, m.in_flight) for m in pool.members))

    async def health_answer(self) -> HealthAnswer:
        """`GET /health`: every upstream's state, and without Redis the start cut-off, so the broker
        mints no token this gate would refuse."""
        answer = HealthAnswer(**await self.pool.snapshot())  # a copy: the snapshot is cached
        if self.not_issued_before is not None:
            answer["not_issued_before"] = self.not_issued_before
        if self.keyset.sources:  # other brokers' JWKS: host, key count and age, never the URL's path
            answer["jwks"] = self.keyset.freshness()
        return answer

    async def metrics_exposition(self) -> bytes:
        """One scrape: the gate's metrics, each upstream's health asked afresh if stale, then the broker's."""
        with contextlib.suppress(Exception):  # an upstream that cannot answer reads as down
            await self.pool.snapshot()
        broker = await self.broker_metrics.fetch()
        self.metrics.broker_up.set(0 if broker is None else 1)
        return self.metrics.render() + (broker or b"")

    async def policy_for(self, members: Sequence[Member], model: str) -> ShapingPolicy:
        """The limits for the grant's model on every upstream the request may go to (`shaping_limits`)."""
        vision, context = await shaping_limits(members, model)
        return ShapingPolicy(max_body_bytes=self.config.max_body_bytes, vision=vision, context=context)

    async def load_target(self, attempts: Attempts, claims: Claims, target: str) -> str:
        """Where a request that names its model goes: a grant with `autoload: false` only where the
        model is loaded (`no_load_target`); any other may load it, charged to its user (`loads`)."""
        model = claims.grant.model
        if not claims.grant.autoload:
            return await self.no_load_target(attempts, model, target)
        if await self.loads.charge(attempts.members, model, claims.sub, time.monotonic()):
            self.metrics.loaded(model)
        return target

    async def no_load_target(self, attempts: Attempts, model: str, target: str) -> str:
        """A grant that may not load: 409 unless its model is loaded now, and the router told not to load.

        Only upstreams that have it loaded are kept, each router asked afresh; `?autoload=false`
        covers a model unloaded between the two.
        """
        loaded = []
        for member in attempts.members:
            status = await member.health.model_status(model)
            if not member.health.router:
                return target  # one model, loaded with llama-server itself: nothing to load
            if status == "loaded":
                loaded.append(member)
        if not loaded:
            raise ModelNotLoaded()
        attempts.keep(loaded)
        return target + "?autoload=false"

    async def authorize(self, head: RequestHead,
                        lane: str) -> tuple[Claims, Metered | None, Granted | RequestRefusal]:
        """The verified, unrevoked claims of the request's bearer token, one of its uses spent, and the
        request's `Metered` (`UsageReporter.begin`), begun at that spend: every refusal from there reports
        its grant ended with nothing generated. A revoked grant is refused after its spend, and reported so
        here: it can never be used, so its reservation and its user's stream return at once. A token that
        did not verify (a forged one cannot settle anyone's grant) or was already spent reports nothing.
        Last, the request's `granted_route`, read once for its metering and its `check_request`."""
        token = _bearer_token(head.headers)
        try:
            claims = self._verify(token)
        except UnknownKey:
            await self.keyset.refresh_for_unknown_kid()
            claims = self._verify(token)
        await self.spend(claims)
        granted = granted_route(head, claims, self.config.lane_prefix)
        metered = self.usage.begin(claims, metered_lane(granted, claims), lane)
        if self.keyset.revocations.is_revoked(claims):
            if metered is not None:
                self.usage.end(metered, status=None, complete=False, chunked=False)
            raise TokenRevoked()
        return claims, metered, granted

    def _verify(self, token: str) -> Claims:
        return verify(
            token,
            keys=self.keyset.trusted,
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


def start_cut_off(started_at: float) -> int:
    """The `iat` a token needs to be accepted: the whole second after the gate started.

    `iat` is whole seconds, so a token minted in the second of a restart, before it, may have been
    spent on the gate that stopped: its use is not in this gate's new memory, so it is refused. The
    broker learns the cut-off from `/health` and mints no earlier `iat` (`BrokerCore.mint_time`); a
    token it minted before it saw the restart is refused once, and minted again by the baseline and
    `DirectAuth` (`401 token_predates_gate`).
    """
    return math.ceil(started_at)


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
