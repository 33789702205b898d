"""The gate's copies of the broker's JWKS and revocations, long-polled on `GET /state`."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
import urllib.parse
from typing import Any

from gate_fakes import FakeServer, Received, _json_response

from broker.signing_keys import SigningKey
from llama_direct.control import STATE_PATH, state_document
from llama_direct.replay import Revocations
from llama_launcher.gate import keyset as keyset_module
from llama_launcher.gate.keyset import KeySet


def run(scenario: Any) -> None:
    base = tempfile.mkdtemp(prefix="gk-", dir="/tmp")
    try:
        asyncio.run(asyncio.wait_for(scenario(os.path.join(base, "control.sock")), 60))
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Control:
    """The broker's side of the long poll: answers at once when `known` is stale, else holds `hold` s, then 304."""

    def __init__(self, path: str, hold: float = 5.0) -> None:
        self.key = SigningKey.generate("EdDSA")
        self.jwks: dict[str, Any] = {"keys": [dict(self.key.public_jwk)]}
        self.revocations = Revocations()
        self.hold = hold
        self.changed = asyncio.Event()
        self.server = FakeServer(path, self.handle)

    def document(self) -> dict[str, Any]:
        found = state_document(self.jwks, self.revocations.to_dict())
        if not isinstance(self.jwks.get("keys"), list):
            found["jwks"] = self.jwks
        return found

    def change(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def handle(self, received: Received, writer: asyncio.StreamWriter) -> None:
        path, _, query = received.target.partition("?")
        assert path == STATE_PATH
        known = urllib.parse.parse_qs(query).get("known", [""])[0]
        if known and self.document()["version"] == known:
            try:
                await asyncio.wait_for(self.changed.wait(), self.hold)
            except TimeoutError:
                writer.write(b"HTTP/1.1 304 Not Modified\r\n\r\n")
                return
        writer.write(_json_response(200, self.document()))


def test_pull_reads_keys_and_revocations_and_keeps_them_when_the_broker_is_gone() -> None:
    async def scenario(path: str) -> None:
        control = Control(path)
        control.revocations.revoke("bob", 1000)
        await control.server.start()
        keyset = KeySet(path)
        assert await keyset.refresh()
        assert list(keyset.keys.keys) == [control.key.kid]
        assert keyset.revocations.to_dict() == {"not_before": {"bob": 1000}}
        await control.server.stop()
        assert not await keyset.refresh()
        assert list(keyset.keys.keys) == [control.key.kid]
        assert len(keyset.revocations) == 1
        await keyset.aclose()

    run(scenario)


def test_a_bad_document_keeps_the_last_good_one() -> None:
    async def scenario(path: str) -> None:
        control = Control(path)
        await control.server.start()
        keyset = KeySet(path)
        assert await keyset.refresh()
        control.jwks = {"keys": "nope"}
        assert not await keyset.refresh()
        assert list(keyset.keys.keys) == [control.key.kid]
        await control.server.stop()
        await keyset.aclose()

    run(scenario)


def test_unknown_kid_pulls_at_most_once_a_second() -> None:
    async def scenario(path: str) -> None:
        control = Control(path)
        await control.server.start()
        keyset = KeySet(path)
        assert await keyset.refresh_for_unknown_kid()
        assert not await keyset.refresh_for_unknown_kid()
        assert [r.target for r in control.server.requests] == ["/state?known="]
        await control.server.stop()
        await keyset.aclose()

    run(scenario)


def test_a_revocation_reaches_a_held_long_poll_at_once() -> None:
    async def scenario(path: str) -> None:
        control = Control(path, hold=60.0)
        await control.server.start()
        keyset = KeySet(path)
        stop = asyncio.Event()
        task = asyncio.ensure_future(keyset.run(stop))
        while not keyset.version:
            await asyncio.sleep(0.01)
        while len(control.server.requests) < 2:  # the second request is the held long poll
            await asyncio.sleep(0.01)
        assert control.server.requests[1].target == f"{STATE_PATH}?known={keyset.version}"
        control.revocations.revoke("bob", 1000)
        control.change()
        # The poll is held for 60 s and the scenario is cut at 30 s: arriving at all proves the change
        # ended the hold, with no clock to read on a loaded machine.
        await asyncio.wait_for(_revoked(keyset), 30.0)
        assert keyset.revocations.to_dict() == {"not_before": {"bob": 1000}}
        stop.set()
        await asyncio.wait_for(task, 10.0)
        await control.server.stop()
        await keyset.aclose()

    run(scenario)


async def _revoked(keyset: KeySet) -> None:
    while len(keyset.revocations) == 0:
        await asyncio.sleep(0.005)


def test_an_unchanged_state_costs_one_request_per_hold() -> None:
    async def scenario(path: str) -> None:
        control = Control(path, hold=0.2)
        await control.server.start()
        keyset = KeySet(path)
        stop = asyncio.Event()
        started = time.monotonic()
        task = asyncio.ensure_future(keyset.run(stop))
        while len(control.server.requests) < 4:
            await asyncio.sleep(0.01)
        # One first pull, then one request per 0.2 s hold, answered 304: the fourth request cannot
        # come before two holds have passed. A lower bound only: a loaded machine makes it later,
        # never earlier, and a busy loop would send the four at once.
        assert time.monotonic() - started >= 2 * 0.2 - 0.05
        stop.set()
        await asyncio.wait_for(task, 5.0)
        assert list(keyset.keys.keys) == [control.key.kid]
        await control.server.stop()
        await keyset.aclose()

    run(scenario)


async def _pulled(keyset: KeySet) -> None:
    while not keyset.version:
        await asyncio.sleep(0.01)


def test_a_failed_long_poll_is_retried_after_the_interval() -> None:
    async def scenario(path: str) -> None:
        keyset = KeySet(path, interval=0.1)
        stop = asyncio.Event()
        task = asyncio.ensure_future(keyset.run(stop))
        await asyncio.sleep(0.25)
        control = Control(path)
        await control.server.start()
        # The interval is 0.1 s and the wait 30 s: a pull that was never retried fails it, and a
        # slow machine does not.
        await asyncio.wait_for(_pulled(keyset), 30.0)
        stop.set()
        await asyncio.wait_for(task, 10.0)
        await control.server.stop()
        await keyset.aclose()

    run(scenario)


def test_a_broker_not_up_yet_is_no_warning_and_one_gone_later_is(caplog: Any) -> None:
    """At every start the gate asks before the broker listens: that is said at INFO; losing the broker
    after keys were pulled is a WARNING, once."""
    async def scenario(path: str) -> None:
        keyset = KeySet(path)
        with caplog.at_level(logging.INFO, logger="llama_launcher.gate.keyset"):
            assert not await keyset.refresh()
            assert [r.levelno for r in caplog.records] == [logging.INFO]
            control = Control(path)
            await control.server.start()
            assert await keyset.refresh()
            await control.server.stop()
            caplog.clear()
            assert not await keyset.refresh()
            assert not await keyset.refresh()
            assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
                (logging.WARNING, "cannot pull keys or revocations from the broker; keeping the last ones")]
        await keyset.aclose()

    run(scenario)


def test_a_broker_that_never_comes_is_warned_of_once_after_the_grace(monkeypatch: Any, caplog: Any) -> None:
    monkeypatch.setattr(keyset_module, "STARTING_GRACE", 0.0)

    async def scenario(path: str) -> None:
        keyset = KeySet(path)
        with caplog.at_level(logging.INFO, logger="llama_launcher.gate.keyset"):
            for _ in range(3):
                assert not await keyset.refresh()
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
            (logging.INFO, "the broker's keys are not there yet; asking again"),
            (logging.WARNING, "cannot pull keys from the broker: none yet after 0 s")]
        await keyset.aclose()

    run(scenario)
