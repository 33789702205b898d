"""Nobody reads, nothing runs: the send timeout, the resume window and the per-user stream cap,
run in-process against the fake llama-server (see gate_fakes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from gate_fakes import MASTER_KEY, Client, Harness, chat_request, running_gate

from llama_launcher.gate.stream_stop import child_ports


def run(scenario: Callable[[Harness], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        async with running_gate(**settings) as harness:
            await scenario(harness)

    asyncio.run(asyncio.wait_for(main(), 20))


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for `condition`, bounded only by the test's own 20 s: a loaded machine may be slow."""
    while not condition():
        await asyncio.sleep(0.01)


def _stops(h: Harness, conversation: str) -> list[str]:
    return [r.target for r in h.llama.requests if r.method == "DELETE" and conversation in r.target]


def test_a_client_that_never_reads_is_cut_after_the_send_timeout_and_its_upstream_with_it() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.chunk_bytes = 64 * 1024  # the fake upstream writes as fast as the gate takes it
        closed = len(h.llama.closed_at)
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        await client.reader.readuntil(b"\r\n\r\n")  # the head came; from here on it reads nothing
        await _until(lambda: len(h.llama.closed_at) > closed and not h.server.gate.connections)
        # Cut with a reset: what the client had not read yet is not fed to it any more.
        with pytest.raises(ConnectionResetError):
            while await client.reader.read(1 << 20):
                pass
        client.close()

    run(scenario, send_timeout=0.3)


def test_a_slow_reader_that_keeps_reading_is_not_cut() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.events = 200
        h.behaviour.delay = 0.005
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        response = await client.response(timeout=15)
        assert response.status == 200 and response.raw_body.endswith(b"0\r\n\r\n")
        client.close()

    run(scenario, send_timeout=0.3)


def _resumable(h: Harness, conversation: str) -> bytes:
    token = h.token(conversation_id=conversation)
    return chat_request(token, extra=b"X-Conversation-Id: " + conversation.encode() + b"\r\n")


def test_a_conversation_stream_whose_client_left_is_stopped_upstream_after_the_window() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever = True
        h.behaviour.delay = 0.02
        client = await Client.open(h.port)
        await client.send(_resumable(h, "conv-1"))
        await client.reader.readuntil(b"\r\n\r\n")
        client.writer.transport.abort()
        await _until(lambda: bool(_stops(h, "conv-1")))
        assert _stops(h, "conv-1") == ["/v1/stream?conv_id=conv-1"]
        (stop,) = [r for r in h.llama.requests if r.method == "DELETE"]
        assert stop.header(b"Authorization") == [b"Bearer " + MASTER_KEY.encode()]
        assert h.server.gate.streams.ledger.counts == {}

    run(scenario, resume_window=0.2)


def test_a_resume_within_the_window_keeps_the_stream_and_its_end_stops_nothing() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever = True
        h.behaviour.delay = 0.02
        client = await Client.open(h.port)
        await client.send(_resumable(h, "conv-2"))
        await client.reader.readuntil(b"\r\n\r\n")
        client.writer.transport.abort()
        await _until(lambda: bool(h.server.gate.streams.ledger.orphans))
        h.behaviour.forever = False
        token = h.token(scope="resume", routes=(("GET", "/v1/stream"),), conversation_id="conv-2")
        resume = await Client.open(h.port)
        await resume.send(b"GET /direct/v1/stream?conv_id=conv-2&from=0 HTTP/1.1\r\nHost: g\r\n"
                          b"Authorization: Bearer " + token.encode() + b"\r\n\r\n")
        assert (await resume.response()).status == 200
        assert not h.server.gate.streams.ledger.orphans
        await asyncio.sleep(1.5)  # past the window: nothing is stopped, the resume took the stream over
        assert _stops(h, "conv-2") == []
        resume.close()

    run(scenario, resume_window=0.5)


async def _hold(h: Harness, token: str) -> Client:
    """A stream that has its head and runs on (the fake upstream streams forever)."""
    client = await Client.open(h.port)
    await client.send(chat_request(token))
    head = await client.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head.split(b"\r\n")[0]
    return client


async def _refused(h: Harness, token: str) -> str:
    client = await Client.open(h.port)
    await client.send(chat_request(token))
    response = await client.response()
    client.close()
    assert response.status == 429, response.status
    return str(response.json()["error"]["reason"])


def test_a_user_past_the_stream_limit_gets_429_too_many_streams_before_llama_server() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever = True
        h.behaviour.delay = 0.02
        held = [await _hold(h, h.token()) for _ in range(2)]
        before = len(h.upstream_requests)
        assert await _refused(h, h.token()) == "too_many_streams"
        assert len(h.upstream_requests) == before
        gone = held.pop()
        gone.writer.transport.abort()
        await _until(lambda: h.server.gate.streams.ledger.counts.get("alice") == 1)
        again = await _hold(h, h.token())
        for client in (*held, gone, again):
            client.close()

    run(scenario, streams_per_user=2)


def test_a_grants_own_stream_limit_caps_its_user_below_the_gates() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever = True
        h.behaviour.delay = 0.02
        ann = await _hold(h, h.token(subject="u-ann", streams=1))
        before = len(h.upstream_requests)
        assert await _refused(h, h.token(subject="u-ann", streams=1)) == "too_many_streams"
        assert len(h.upstream_requests) == before
        others = [await _hold(h, h.token(subject="u-bob")) for _ in range(3)]  # the gate's 3 for bob
        assert await _refused(h, h.token(subject="u-bob")) == "too_many_streams"
        ann.writer.transport.abort()
        await _until(lambda: "u-ann" not in h.server.gate.streams.ledger.counts)
        again = await _hold(h, h.token(subject="u-ann", streams=1))
        for client in (*others, again):
            client.close()

    run(scenario, streams_per_user=3)


def test_a_grants_own_stream_limit_lets_its_user_past_the_gates() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever = True
        h.behaviour.delay = 0.02
        held = [await _hold(h, h.token(subject="u-ann", streams=3)) for _ in range(3)]
        assert await _refused(h, h.token(subject="u-ann", streams=3)) == "too_many_streams"
        for client in held:
            client.close()

    run(scenario, streams_per_user=1)


def test_the_owner_is_not_capped_by_default() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever = True
        h.behaviour.delay = 0.02
        held = [await _hold(h, h.token()) for _ in range(3)]
        for client in held:
            client.close()

    run(scenario, streams_per_user=1, uncapped_users=["alice"])


def test_child_ports_come_from_loaded_models_only() -> None:
    listing = {"data": [
        {"id": "a", "status": {"value": "loaded", "args": ["llama-server", "--host", "127.0.0.1", "--port", "4100"]}},
        {"id": "b", "status": {"value": "unloaded", "args": ["--port", "4200"]}},
        {"id": "c", "status": {"value": "loaded", "args": ["--port", "99999"]}},
        {"id": "d", "status": "loaded"},
    ]}
    assert child_ports(listing) == [4100]
    assert child_ports({"data": "x"}) == [] and child_ports(None) == []
