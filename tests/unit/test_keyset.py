"""The gate's copies of the broker's JWKS and revocations."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from typing import Any

from gate_fakes import FakeServer, Received, _json_response

from broker.signing_keys import SigningKey
from llama_direct.replay import Revocations
from llama_launcher.gate.keyset import KeySet


def run(scenario: Any) -> None:
    base = tempfile.mkdtemp(prefix="gk-", dir="/tmp")
    try:
        asyncio.run(asyncio.wait_for(scenario(os.path.join(base, "control.sock")), 10))
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Control:
    def __init__(self, path: str) -> None:
        self.key = SigningKey.generate("EdDSA")
        self.jwks: dict[str, Any] = {"keys": [dict(self.key.public_jwk)]}
        self.revocations = Revocations()
        self.server = FakeServer(path, self.handle)

    async def handle(self, received: Received, writer: asyncio.StreamWriter) -> None:
        if received.target == "/jwks":
            writer.write(_json_response(200, self.jwks))
        else:
            writer.write(_json_response(200, self.revocations.to_dict()))


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
        assert [r.target for r in control.server.requests] == ["/jwks", "/revocations"]
        await control.server.stop()
        await keyset.aclose()

    run(scenario)


def test_run_pulls_every_interval_until_stopped() -> None:
    async def scenario(path: str) -> None:
        control = Control(path)
        await control.server.start()
        keyset = KeySet(path, interval=0.05)
        stop = asyncio.Event()
        task = asyncio.ensure_future(keyset.run(stop))
        started = time.monotonic()
        while sum(r.target == "/jwks" for r in control.server.requests) < 3:
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 1.0
        stop.set()
        await asyncio.wait_for(task, 1.0)
        await control.server.stop()
        await keyset.aclose()

    run(scenario)
