"""The broker's uvicorn servers never wake on a timer: the `Date` header is made on demand, and the
main loop sleeps until `stop` (issue 18: an idle broker spends ≤ 1 ms of CPU a second)."""

from __future__ import annotations

import asyncio
from email.utils import parsedate_to_datetime

import pytest
import uvicorn
from fastapi import FastAPI

from broker import server
from broker.server import _DatedState, _Server


def _config(**options: object) -> uvicorn.Config:
    config = uvicorn.Config(FastAPI(), loop="none", **options)  # type: ignore[arg-type]
    config.load()
    return config


def test_the_date_header_is_made_when_read_and_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_700_000_000.25]
    monkeypatch.setattr(server.time, "time", lambda: clock[0])
    state = _DatedState(_config(headers=[("x-extra", "1")]))
    first = state.default_headers
    assert first[0][0] == b"date" and (b"x-extra", b"1") in first
    assert parsedate_to_datetime(first[0][1].decode()).timestamp() == 1_700_000_000
    clock[0] += 0.5
    assert state.default_headers is first  # the same second: nothing is made again
    clock[0] += 1.0
    assert parsedate_to_datetime(state.default_headers[0][1].decode()).timestamp() == 1_700_000_001
    state.default_headers = []  # what uvicorn's own tick would do changes nothing
    assert state.default_headers[0][0] == b"date"


def test_without_a_date_header_only_the_configured_ones_remain() -> None:
    assert _DatedState(_config(date_header=False, server_header=False)).default_headers == []


def test_the_main_loop_sleeps_until_stop() -> None:
    async def main() -> None:
        instance = _Server(_config())
        loop = asyncio.create_task(instance.main_loop())
        await asyncio.sleep(0.05)
        assert not loop.done()
        instance.stop()
        await asyncio.wait_for(loop, 1)
        assert instance.should_exit

    asyncio.run(main())
