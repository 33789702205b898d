"""The gate charges a model load to the user whose request causes it, once per load (issue 25, finding 4)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pytest
from gate_fakes import FakeServer, Received

from llama_direct.control import LOADS_PATH
from llama_direct.refusals import BrokerUnavailable, RateLimited
from llama_launcher.gate.health import ModelState
from llama_launcher.gate.load_charges import OPEN_SECONDS, LoadCharger, OpenLoads


@dataclass
class FakeHealth:
    """A router's health: `status` for the model asked about, `listed` for what its last read listed."""

    status: str | None
    asked: int = 0
    listed: dict[str, str] = field(default_factory=dict)

    async def model_status(self, model: str) -> str | None:
        self.asked += 1
        return self.status

    @property
    def models(self) -> dict[str, ModelState]:
        return {name: ModelState(status, vision=False) for name, status in self.listed.items()}


@dataclass
class FakeMember:
    health: FakeHealth


@dataclass
class Broker:
    """The control socket's `POST /loads`: 204 until `limit` charges, then 429 with Retry-After."""

    limit: int = 100
    charges: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, received: Received, writer: asyncio.StreamWriter) -> None:
        assert (received.method, received.target) == ("POST", LOADS_PATH)
        self.charges.append(json.loads(received.body))
        if len(self.charges) > self.limit:
            body = b'{"error":{"code":429,"reason":"rate_limited"}}'
            writer.write(b"HTTP/1.1 429 X\r\nRetry-After: 17\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        else:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")


def run(scenario: Any, broker: Broker | None = None) -> None:
    base = tempfile.mkdtemp(prefix="lc-", dir="/tmp")
    path = os.path.join(base, "control.sock")

    async def main() -> None:
        server = FakeServer(path, broker.handle) if broker is not None else None
        if server is not None:
            await server.start()
        charger = LoadCharger(path)
        try:
            await scenario(charger)
        finally:
            await charger.aclose()
            if server is not None:
                await server.stop()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def members(*statuses: str | None) -> list[FakeMember]:
    return [FakeMember(FakeHealth(status)) for status in statuses]


def test_a_request_that_loads_its_model_is_charged_once_to_its_user() -> None:
    broker = Broker()

    async def scenario(charger: LoadCharger) -> None:
        router = members("unloaded")
        await charger.charge(router, "beta", "ann", 100.0)
        await charger.charge(router, "beta", "bob", 101.0)  # the same load, still starting: rides on ann's
        assert broker.charges == [{"user": "ann", "model": "beta"}]
        assert router[0].health.asked == 2, "the router is asked afresh each time"
        await charger.charge(members("loaded"), "beta", "bob", 102.0)  # under way: the charge is settled
        await charger.charge(router, "beta", "bob", 103.0)  # evicted since: another load, bob's
        assert broker.charges[-1] == {"user": "bob", "model": "beta"} and len(broker.charges) == 2

    run(scenario, broker)


def test_alternating_two_models_charges_every_load_however_fast() -> None:
    """The read made for one model shows the other's load happened: its next load is charged again,
    within the open window too (the alternating-grant loop made 7 loads with a limit of 2)."""
    broker = Broker()

    async def scenario(charger: LoadCharger) -> None:
        now = 100.0
        for model, other in [("beta", "alpha"), ("alpha", "beta"), ("beta", "alpha"), ("alpha", "beta")]:
            router = [FakeMember(FakeHealth("unloaded", listed={model: "unloaded", other: "loaded"}))]
            await charger.charge(router, model, "ann", now)
            now += 0.5
        assert [c["model"] for c in broker.charges] == ["beta", "alpha", "beta", "alpha"]

    run(scenario, broker)


def test_nothing_is_charged_where_nothing_loads() -> None:
    broker = Broker()

    async def scenario(charger: LoadCharger) -> None:
        for statuses in [("loaded",), ("loading",), (None,), ("unloaded", "loaded"), ("unloaded", None), ()]:
            await charger.charge(members(*statuses), "beta", "ann", 100.0)
        assert broker.charges == []

    run(scenario, broker)


def test_over_the_limit_the_request_is_refused_with_the_brokers_retry_after() -> None:
    broker = Broker(limit=1)

    async def scenario(charger: LoadCharger) -> None:
        await charger.charge(members("unloaded"), "a", "ann", 100.0)
        with pytest.raises(RateLimited) as limited:
            await charger.charge(members("unloaded"), "b", "ann", 100.5)
        assert limited.value.retry_after == 17
        with pytest.raises(RateLimited):  # a refused load is not open: the next request asks again
            await charger.charge(members("unloaded"), "b", "ann", 101.0)

    run(scenario, broker)


def test_a_broker_that_cannot_answer_refuses_the_load_rather_than_letting_it_through() -> None:
    async def scenario(charger: LoadCharger) -> None:
        with pytest.raises(BrokerUnavailable):
            await charger.charge(members("unloaded"), "beta", "ann", 100.0)

    run(scenario, broker=None)


def test_an_open_charge_lapses_after_its_window() -> None:
    loads = OpenLoads()
    assert loads.needs_charge("m", 0.0)
    loads.charged("m", 0.0)
    assert not loads.needs_charge("m", OPEN_SECONDS)
    assert loads.needs_charge("m", OPEN_SECONDS + 0.1), "a load that never started is charged again"
    loads.charged("m", 50.0)
    loads.under_way("m")
    assert loads.needs_charge("m", 50.1)
