"""The broker's link to the gate's private socket: its health, polled, and the baseline's transport.

The health is polled every `HEALTH_INTERVAL_SECONDS` while it is read (a negotiation in the last
`ACTIVE_SECONDS`) or while the lane is not ready, and every `IDLE_INTERVAL_SECONDS` otherwise: each
poll costs the gate a `/health` and `/slots` round to llama-server, and an idle pair must stay
under a millisecond of CPU a second. The first read after a quiet spell wakes the poller at once;
that read itself gets the last answer, at most `IDLE_INTERVAL_SECONDS` old, which can only be "up"
(a gate that is down is polled at the fast rate), and a gate that went down meanwhile refuses the
token itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from broker.negotiation import (
    GATE_DOWN,
    GateHealth,
)
from broker.settings import BrokerSettings
from llama_direct.refusals import (
    GateUnavailable,
)

logger = logging.getLogger(__name__)


HEALTH_INTERVAL_SECONDS = 0.5
IDLE_INTERVAL_SECONDS = 5.0
ACTIVE_SECONDS = 5.0
HEALTH_TIMEOUT_SECONDS = 1.0


class GateLink:
    """The broker's one door to the gate's private socket: the health poller and the baseline.

    A fresh connection per request: the gate may close a kept-alive connection after a stream, and
    a unix-socket connect costs microseconds.
    """

    def __init__(self, settings: BrokerSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._health: GateHealth = GATE_DOWN
        self._read_at = -ACTIVE_SECONDS
        self._polled_at = 0.0
        self._wake = asyncio.Event()
        self._settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._poller: asyncio.Task[None] | None = None
        self.on_health: Callable[[GateHealth], None] | None = None
        """Called with each answer polled (the broker settles its load charges there)."""

    @property
    def health(self) -> GateHealth:
        """The last answer; reading it keeps the fast poll going, and wakes a poller gone quiet."""
        now = time.monotonic()
        self._read_at = now
        if now - self._polled_at > HEALTH_INTERVAL_SECONDS:
            self._wake.set()
        return self._health

    @health.setter
    def health(self, value: GateHealth) -> None:
        self._health = value

    def interval(self, now: float) -> float:
        """Fast while the health is read or the lane is not ready; slow when nothing asks."""
        ready = self._health.up and self._health.model_ready
        return HEALTH_INTERVAL_SECONDS if not ready or now - self._read_at < ACTIVE_SECONDS else IDLE_INTERVAL_SECONDS

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise GateUnavailable()
        return self._client

    async def start(self) -> None:
        transport = self._transport or httpx.AsyncHTTPTransport(
            uds=str(self._settings.gate_socket), limits=httpx.Limits(max_keepalive_connections=0)
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            base_url="http://gate",
            timeout=httpx.Timeout(connect=2.0, read=None, write=30.0, pool=5.0),
        )
        await self.poll_once()
        self._poller = asyncio.create_task(self._poll_forever(), name="gate-health")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def poll_once(self) -> None:
        try:
            answer = await self.client.get("/health", timeout=HEALTH_TIMEOUT_SECONDS)
            health = GateHealth.from_answer(answer.json()) if answer.status_code == 200 else GATE_DOWN
        except (httpx.HTTPError, ValueError):
            health = GATE_DOWN
        if health.up != self._health.up or health.model_ready != self._health.model_ready:
            logger.info("event=gate_health gate_up=%s model_ready=%s", health.up, health.model_ready)
        self._health = health
        self._polled_at = time.monotonic()
        if self.on_health is not None:
            self.on_health(health)

    async def _poll_forever(self) -> None:
        """Never stops on a surprise: a poller that died would leave a stale answer in place for good."""
        while True:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval(time.monotonic()))
            try:
                await self.poll_once()
            except Exception as exc:
                logger.error("event=health_poll_failed error=%s", type(exc).__name__)
                self._health = GATE_DOWN
