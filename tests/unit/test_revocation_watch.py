"""A revocation at one broker wakes the long polls held at every broker, through Redis pub/sub (issue 24).

Each broker used to re-read the shared revocations every 0.25 s while its gate's poll was held: 3.8 ms
of CPU a second in an idle broker, 2.2 ms/s in redis-server. Now a held poll waits for an
announcement. These tests hold polls for `HOLD` seconds, far longer than any bound they wait, so an
answer within the bound can only come from the announcement: with the watch subscribed there is no
other periodic re-read. Bounds are generous (a loaded 2-core box); only counts are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from broker_harness import ACCESS_TOKEN, _settings
from redis_server import RedisServer

import broker.app
import broker.revocation_watch
from broker.app import create_control_app
from broker.core import BrokerCore
from broker.revocation_watch import RevocationWatch
from broker.shared_state import sync_client
from llama_direct.shared_replay import REVOCATIONS_KEY

HOLD = 120.0
BOUND = 20.0
"""How long a test waits for something that takes milliseconds: a sixth of the hold."""


@pytest.fixture(autouse=True)
def _long_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.app, "HOLD_SECONDS", HOLD)


def _core(tmp_path: Path, name: str, url: str) -> BrokerCore:
    (tmp_path / name).mkdir()
    return BrokerCore(_settings(tmp_path / name), ACCESS_TOKEN, redis_url=url)


async def _until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _held(core: BrokerCore) -> AsyncIterator[asyncio.Future[httpx.Response]]:
    """A `/state` poll that knows the current version, so the broker holds it."""
    transport = httpx.ASGITransport(app=create_control_app(core))
    async with httpx.AsyncClient(transport=transport, base_url="http://control", timeout=HOLD + 10) as control:
        known = (await control.get("/state")).json()["version"]
        poll = asyncio.ensure_future(control.get("/state", params={"known": known}))
        try:
            yield poll
        finally:
            core.stop_waiting()
            await poll


def _watch(core: BrokerCore) -> RevocationWatch:
    assert core.watch is not None
    return core.watch


def _commands(client: redis.Redis) -> int:
    """Every command redis-server has run but `INFO`, which this count sends (`client` is connected
    already: a new connection's handshake would count)."""
    stats = client.info("commandstats")
    assert isinstance(stats, dict)
    return sum(int(entry["calls"]) for name, entry in stats.items() if name != "cmdstat_info")


def test_a_revocation_at_one_broker_wakes_a_poll_held_at_another(redis_server: RedisServer, tmp_path: Path) -> None:
    a, b = _core(tmp_path, "a", redis_server.url), _core(tmp_path, "b", redis_server.url)

    async def scenario() -> None:
        async with _held(b) as poll:
            await _until(lambda: _watch(b).live)
            await asyncio.sleep(0.2)
            assert not poll.done()
            a.revoke("alice")
            answer = await asyncio.wait_for(asyncio.shield(poll), BOUND)
            assert answer.status_code == 200
            assert set(answer.json()["revocations"]["not_before"]) == {"alice"}

    asyncio.run(scenario())


def test_an_idle_held_poll_sends_redis_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    """Counted, not timed: the old re-read sent 8 commands a second (`HGETALL` twice every 0.25 s)."""
    b = _core(tmp_path, "b", redis_server.url)

    async def scenario() -> None:
        async with _held(b) as poll:
            await _until(lambda: _watch(b).live)
            await asyncio.sleep(0.5)  # the re-read that the subscription itself triggers
            counter = sync_client(redis_server.url)
            before = _commands(counter)
            await asyncio.sleep(2.0)
            assert _commands(counter) - before == 0
            assert not poll.done()

    asyncio.run(scenario())


def test_the_watch_survives_a_redis_restart_with_one_warning_and_no_busy_loop(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(broker.revocation_watch, "FIRST_BACKOFF_SECONDS", 0.05)
    monkeypatch.setattr(broker.revocation_watch, "MAX_BACKOFF_SECONDS", 0.2)
    tries = 0
    subscriber = broker.revocation_watch._subscriber

    def counted(url: str) -> Any:
        nonlocal tries
        tries += 1
        return subscriber(url)

    monkeypatch.setattr(broker.revocation_watch, "_subscriber", counted)
    a, b = _core(tmp_path, "a", redis_server.url), _core(tmp_path, "b", redis_server.url)
    caplog.set_level(logging.INFO, logger="broker.revocation_watch")

    async def scenario() -> None:
        _watch(b).start()
        await _until(lambda: _watch(b).live)
        redis_server.stop()
        await _until(lambda: not _watch(b).live)
        down, tries_before = time.monotonic(), tries
        await asyncio.sleep(1.0)
        redis_server.start()
        await _until(lambda: _watch(b).live)
        # Backed off: at most one try per first back-off over the outage, however slow the box.
        assert 2 <= tries - tries_before <= (time.monotonic() - down) / 0.05 + 2
        async with _held(b) as poll:
            a.revoke("alice")
            answer = await asyncio.wait_for(asyncio.shield(poll), BOUND)
            assert set(answer.json()["revocations"]["not_before"]) == {"alice"}

    asyncio.run(scenario())
    # The watch's own records: another test may have left the root logger at INFO, so the revoke's own
    # `event=revoked` (broker.core) can be captured too.
    events = [(record.levelname, record.getMessage().split()[0]) for record in caplog.records
              if record.name == "broker.revocation_watch"]
    assert events == [("WARNING", "event=revocation_watch_down"), ("INFO", "event=revocation_watch_up")]


def test_while_the_watch_is_down_a_held_poll_rereads_redis_itself(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revocation nobody announced (written while this broker's subscription was down) still
    reaches the gate within a second: an unsubscribed watch cuts the wait to 0.25 s."""
    monkeypatch.setattr(RevocationWatch, "start", lambda self: None)
    b = _core(tmp_path, "b", redis_server.url)

    async def scenario() -> None:
        async with _held(b) as poll:
            await asyncio.sleep(0.2)
            assert not poll.done()
            sync_client(redis_server.url).hset(REVOCATIONS_KEY, "alice", int(time.time()) + 1)
            answer = await asyncio.wait_for(asyncio.shield(poll), BOUND)
            assert set(answer.json()["revocations"]["not_before"]) == {"alice"}

    asyncio.run(scenario())
