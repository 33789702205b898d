"""The gate's one door to llama-server: every connection error becomes a 502 or a 504."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any

import pytest
from gate_fakes import FakeServer, Received, StaticUpstream, _json_response

from llama_direct.llama_server import NotListening
from llama_launcher.gate.upstream import (
    UpstreamTimeout,
    UpstreamUnavailable,
    connect,
    connect_upstream,
    get_json,
)


def run(scenario: Any) -> None:
    base = tempfile.mkdtemp(prefix="gu-", dir="/tmp")
    try:
        asyncio.run(asyncio.wait_for(scenario(os.path.join(base, "up.sock")), 10))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_static_upstream_never_shows_its_key() -> None:
    upstream = StaticUpstream("/run/x.sock", key="secret-key-123456")
    assert upstream.authorization() == b"Bearer secret-key-123456"
    assert "secret-key" not in repr(upstream)


def test_a_missing_socket_is_unavailable_with_a_safe_message() -> None:
    async def scenario(path: str) -> None:
        with pytest.raises(UpstreamUnavailable) as caught:
            await connect(path, asyncio.Protocol, timeout=1.0)
        assert caught.value.status == 502
        assert path not in caught.value.to_body().decode()
        with pytest.raises(UpstreamUnavailable):
            await connect(("127.0.0.1", 1), asyncio.Protocol, timeout=1.0)

    run(scenario)


def test_a_connect_that_hangs_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(path: str) -> None:
        loop = asyncio.get_running_loop()

        async def hang(*args: object, **kwargs: object) -> None:
            await asyncio.sleep(10)

        monkeypatch.setattr(loop, "create_unix_connection", hang)
        with pytest.raises(UpstreamTimeout) as caught:
            await connect(path, asyncio.Protocol, timeout=0.05)
        assert caught.value.status == 504

    run(scenario)


def test_an_upstream_not_listening_yet_is_unavailable() -> None:
    class NotStarted:
        """Like the launcher's LlamaServer between spawn and its "listening on" line."""

        ssl = None
        host_header = b"llama-server"

        @property
        def address(self) -> str:
            raise NotListening("llama-server is not listening yet")

        def authorization(self) -> bytes:
            raise NotListening("llama-server has not been started")

        def is_ready(self) -> bool:
            return False

    async def scenario(path: str) -> None:
        with pytest.raises(UpstreamUnavailable):
            await connect_upstream(NotStarted(), asyncio.Protocol, timeout=1.0)

    run(scenario)


def test_get_json_sends_the_master_key_and_reads_the_document() -> None:
    async def scenario(path: str) -> None:
        async def handler(received: Received, writer: asyncio.StreamWriter) -> None:
            writer.write(_json_response(200, {"status": "ok"}))

        server = FakeServer(path, handler)
        await server.start()
        status, document = await get_json(StaticUpstream(path, key="master-key-abcdef"), "/health", timeout=1.0)
        assert (status, document) == (200, {"status": "ok"})
        (received,) = server.requests
        assert received.header(b"Authorization") == [b"Bearer master-key-abcdef"]
        await server.stop()

    run(scenario)
