"""The broker's link to the gate's private socket: its health, asked for when it is read, and the baseline.

Every answer that depends on the gate's health (negotiation, `GET /v1/models`, the baseline, the
control socket's `/health`) reads it through `fresh()`, which asks the gate first when the last
answer is more than `FRESH_SECONDS` old: so `gate_down` and `model_loading` follow a change within a
second, however long the broker sat idle. Concurrent readers share one question.

Behind that, a poller keeps the answer warm so that reads seldom wait: every
`HEALTH_INTERVAL_SECONDS` while the health is read (a read in the last `ACTIVE_SECONDS`) or while
the lane is not ready, and every `IDLE_INTERVAL_SECONDS` otherwise, only so that a change is logged.
Each poll costs the gate a `/health` and `/slots` round to llama-server and the broker about 2 ms of
CPU, and an idle pair must stay under a millisecond of CPU a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from broker.gate_health import GATE_DOWN, GateHealth
from broker.settings import BrokerSettings
from llama_direct.control import GATE_UNLOAD_PATH, unload_request
from llama_direct.refusals import (
    GateUnavailable,
)

logger = logging.getLogger(__name__)


HEALTH_INTERVAL_SECONDS = 0.5
IDLE_INTERVAL_SECONDS = 30.0
ACTIVE_SECONDS = 5.0
FRESH_SECONDS = 1.0
HEALTH_TIMEOUT_SECONDS = 1.0
UNLOAD_TIMEOUT_SECONDS = 40.0
"""Above the gate's own bound on a router's answer (`llama_launcher.gate.unload.UNLOAD_TIMEOUT`)."""


class GateLink:
    """The broker's one door to the gate's private socket: the health and the baseline.

    A fresh connection per request: the gate may close a kept-alive connection after a stream, and
    a unix-socket connect costs microseconds.
    """

    def __init__(self, settings: BrokerSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._health: GateHealth = GATE_DOWN
        self._read_at = -ACTIVE_SECONDS
        self._polled_at = -FRESH_SECONDS
        self._asking: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        """Made anew at each `start`: an event is bound to the loop that first waits on it, and a host app
        may run the link's lifespan more than once, each on a loop of its own (a test client per test)."""
        self._settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._poller: asyncio.Task[None] | None = None
        self.on_health: Callable[[GateHealth], None] | None = None
        """Called with each answer polled (the broker settles its load charges there)."""

    @property
    def health(self) -> GateHealth:
        """The last answer, however old: what the log and the tests look at; answers read `fresh()`."""
        return self._health

    @health.setter
    def health(self, value: GateHealth) -> None:
        """An answer from elsewhere (a test, an app run without its lifespan), counted as just asked."""
        self._health = value
        self._polled_at = time.monotonic()

    async def fresh(self) -> GateHealth:
        """The gate's health, at most `FRESH_SECONDS` old: asked now when the last answer is older.

        A read also keeps the poller at its fast rate, and wakes it when it had gone quiet. A link
        that is not started (no client) has nobody to ask and gives its last answer.
        """
        now = time.monotonic()
        was_idle = now - self._read_at >= ACTIVE_SECONDS
        self._read_at = now
        if self._client is not None and now - self._polled_at > FRESH_SECONDS:
            await self._ask()
        if was_idle:
            self._wake.set()
        return self._health

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
        self._wake = asyncio.Event()
        await self._ask()
        self._poller = asyncio.create_task(self._poll_forever(), name="gate-health")

    async def stop(self) -> None:
        for task in (self._poller, self._asking):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._poller = self._asking = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def unload(self, model: str) -> int:
        """Ask the gate to unload a router's model (`llama_direct.control.GATE_UNLOAD_PATH`): its status,
        0 when the gate did not answer. The next read asks the gate afresh, so the unload shows at once."""
        try:
            answer = await self.client.post(GATE_UNLOAD_PATH, json=unload_request(model),
                                            timeout=UNLOAD_TIMEOUT_SECONDS)
        except httpx.HTTPError:
            return 0
        self._polled_at = -FRESH_SECONDS
        return answer.status_code

    async def poll_once(self) -> None:
        try:
            answer = await self.client.get("/health", timeout=HEALTH_TIMEOUT_SECONDS)
            health = GateHealth.read(answer.content) if answer.status_code == 200 else GATE_DOWN
        except httpx.HTTPError:
            health = GATE_DOWN
        if health.malformed is not None and health.malformed != self._health.malformed:
            logger.warning("event=gate_health_malformed problem=%r", health.malformed)
        if health.up != self._health.up or health.model_ready != self._health.model_ready:
            logger.info("event=gate_health gate_up=%s model_ready=%s", health.up, health.model_ready)
        self._health = health
        self._polled_at = time.monotonic()
        if self.on_health is not None:
            self.on_health(health)

    async def _ask(self) -> None:
        """One question to the gate, shared by whoever asks while it is out.

        Shielded: a reader that goes away (its client hung up) does not cancel the others' answer.
        """
        if self._asking is None or self._asking.done():
            self._asking = asyncio.create_task(self._poll_guarded(), name="gate-health-ask")
        await asyncio.shield(self._asking)

    async def _poll_guarded(self) -> None:
        """Never raises: a surprise counts as a gate that is down, never as a stale answer kept."""
        try:
            await self.poll_once()
        except Exception as exc:
            logger.error("event=health_poll_failed error=%s", type(exc).__name__)
            self._health = GATE_DOWN
            self._polled_at = time.monotonic()

    async def _poll_forever(self) -> None:
        """Sleeps until the next poll is due; a wake (a read after a quiet spell) recomputes when that is."""
        while True:
            self._wake.clear()
            wait = self._polled_at + self.interval(time.monotonic()) - time.monotonic()
            if wait > 0:
                # `asyncio.timeout`, not `wait_for`: in 3.11 `wait_for` swallows a cancel that lands as
                # the wake does, and `stop` would wait on a poller that never ends.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            await self._ask()
