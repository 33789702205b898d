"""The broker's view of the gate's health: fresh within a second when read, and quiet when nobody reads it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from health_answers import ready_health
from waiting import until

from broker import gate_link
from broker.gate_health import GATE_DOWN, GateHealth
from broker.gate_link import GateLink
from broker.settings import BrokerSettings

READY = ready_health()
LOADING = {**READY, "model_ready": False}


@dataclass
class Gate:
    """The gate's `/health`, counted; `delay` holds each answer back, `reachable` refuses the connect."""

    answer: dict[str, Any] = field(default_factory=lambda: dict(READY))
    reachable: bool = True
    delay: float = 0.0
    asked: int = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/health"
        self.asked += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.reachable:
            raise httpx.ConnectError("no gate")
        return httpx.Response(200, json=self.answer)


def _settings(tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(data_dir=tmp_path / "data", broker_socket=tmp_path / "b.sock",
                          control_socket=tmp_path / "c.sock", gate_socket=tmp_path / "g.sock", model="smol")


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The link's clock scaled down, so that a second of behaviour takes a tenth of one."""
    monkeypatch.setattr(gate_link, "FRESH_SECONDS", 0.1)
    monkeypatch.setattr(gate_link, "HEALTH_INTERVAL_SECONDS", 0.05)
    monkeypatch.setattr(gate_link, "ACTIVE_SECONDS", 0.3)
    monkeypatch.setattr(gate_link, "IDLE_INTERVAL_SECONDS", 30.0)


async def polled(gate: Gate, count: int, within: float) -> None:
    """Wait until the gate has been asked `count` more times, a bound on the link's own schedule."""
    asked = gate.asked
    await until(lambda: gate.asked - asked >= count, within=within, what=f"{count} more polls")


def run(tmp_path: Path, gate: Gate, body: Callable[[GateLink], Awaitable[None]]) -> None:
    async def main() -> None:
        link = GateLink(_settings(tmp_path), httpx.MockTransport(gate.handle))
        await link.start()
        try:
            await body(link)
        finally:
            await link.stop()

    asyncio.run(main())


@pytest.mark.usefixtures("fast")
class TestFresh:
    def test_a_read_after_the_answer_aged_asks_the_gate_and_sees_each_change(self, tmp_path: Path) -> None:
        gate = Gate()

        async def body(link: GateLink) -> None:
            assert (await link.fresh()).model_ready
            gate.answer = dict(LOADING)
            await asyncio.sleep(0.12)
            loading = await link.fresh()
            assert (loading.up, loading.model_ready) == (True, False)
            gate.reachable = False
            await asyncio.sleep(0.12)
            assert await link.fresh() is GATE_DOWN

        run(tmp_path, gate, body)

    def test_a_read_of_a_recent_answer_asks_nothing(self, tmp_path: Path) -> None:
        gate = Gate()

        async def body(link: GateLink) -> None:
            asked = gate.asked
            for _ in range(20):
                assert (await link.fresh()).model_ready
            assert gate.asked == asked

        run(tmp_path, gate, body)

    def test_readers_of_a_stale_answer_share_one_question(self, tmp_path: Path) -> None:
        gate = Gate()

        async def body(link: GateLink) -> None:
            link.health = GateHealth.from_answer(READY)  # the poller is not due for a while
            await asyncio.sleep(0.12)
            gate.delay, gate.answer, asked = 0.02, dict(LOADING), gate.asked
            answers = await asyncio.gather(*(link.fresh() for _ in range(10)))
            assert gate.asked == asked + 1
            assert {a.model_ready for a in answers} == {False}

        run(tmp_path, gate, body)

    def test_a_reader_that_goes_away_leaves_the_question_to_the_others(self, tmp_path: Path) -> None:
        gate = Gate()

        async def body(link: GateLink) -> None:
            link.health = GateHealth.from_answer(READY)
            await asyncio.sleep(0.12)
            gate.delay, gate.answer = 0.05, dict(LOADING)
            leaving = asyncio.create_task(link.fresh())
            staying = asyncio.create_task(link.fresh())
            await asyncio.sleep(0.01)
            leaving.cancel()
            assert (await staying).model_ready is False

        run(tmp_path, gate, body)

    def test_a_link_not_started_gives_its_last_answer(self, tmp_path: Path) -> None:
        async def main() -> None:
            link = GateLink(_settings(tmp_path))
            assert await link.fresh() is GATE_DOWN
            link.health = GateHealth.from_answer(READY)
            assert (await link.fresh()).model_ready

        asyncio.run(main())


@pytest.mark.usefixtures("fast")
class TestPoller:
    def test_an_idle_ready_lane_is_not_polled(self, tmp_path: Path) -> None:
        gate = Gate()

        async def body(link: GateLink) -> None:
            await until(lambda: gate.asked > 0, within=10.0, what="the first poll")  # idle from it on: no read
            asked = gate.asked
            await asyncio.sleep(0.5)
            assert gate.asked == asked

        run(tmp_path, gate, body)

    def test_a_lane_not_ready_is_polled_fast_though_nobody_reads(self, tmp_path: Path) -> None:
        gate = Gate(answer=dict(LOADING))

        async def body(link: GateLink) -> None:
            await polled(gate, 5, within=3.0)  # the idle poll would take 30 s a time
            gate.answer = dict(READY)
            await until(lambda: link.health.model_ready, within=3.0, what="the ready answer polled")

        run(tmp_path, gate, body)

    def test_a_read_after_a_quiet_spell_brings_the_fast_poll_back_until_reads_stop(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(gate_link, "ACTIVE_SECONDS", 1.5)  # a read keeps the poll fast this long
        gate = Gate()

        async def body(link: GateLink) -> None:
            await asyncio.sleep(0.2)
            await link.fresh()
            read = time.monotonic()
            await polled(gate, 3, within=1.0)  # every 0.05 s while read; the idle poll is 30 s away
            await asyncio.sleep(max(0.0, read + 1.5 + 0.3 - time.monotonic()))  # reads stopped
            asked = gate.asked
            await asyncio.sleep(0.4)
            assert gate.asked == asked

        run(tmp_path, gate, body)

    def test_the_interval_is_fast_while_read_or_not_ready(self, tmp_path: Path) -> None:
        link = GateLink(_settings(tmp_path))
        assert link.interval(100.0) == gate_link.HEALTH_INTERVAL_SECONDS  # down
        link.health = GateHealth.from_answer(READY)
        assert link.interval(100.0) == gate_link.IDLE_INTERVAL_SECONDS

    def test_a_link_started_again_on_another_loop_polls_there(self, tmp_path: Path) -> None:
        """A host app may run the broker's lifespan more than once, each on a loop of its own (a test
        client per test): the poller's wake must not stay bound to the first loop."""
        gate = Gate(answer=dict(LOADING))  # polled every 0.05 s: the poller waits on its wake between polls
        link = GateLink(_settings(tmp_path), httpx.MockTransport(gate.handle))

        async def session() -> None:
            await link.start()
            try:
                asked = gate.asked
                for _ in range(2000):  # a guard against a hang, not a bound: two polls come well before
                    if gate.asked >= asked + 2:
                        break
                    await asyncio.sleep(0.01)
                assert gate.asked >= asked + 2
            finally:
                await link.stop()

        asyncio.run(session())
        asyncio.run(session())
