"""Hostile requests against the real gate code, in-process, in front of a counting fake llama-server.

Each case is its own parametrized test with its own exact answer (status and the whole error
body), and each proves that llama-server received nothing from it (`hostile_support.run_case`).
The cases live in `hostile_gate_wire.py` (tokens, HTTP framing) and `hostile_gate_requests.py` (paths,
bodies, costs, CORS), in tests/support. The broker's own hostile cases are in `test_hostile_broker.py`,
on its standalone app and on a host app that mounts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
from gate_fakes import Client, chat_request
from hostile_gate_requests import BODIES, CORS, COSTS, PATHS, origin_header
from hostile_gate_wire import APP, HTTP, TOKENS, TWO_PORT
from hostile_support import (
    CHAT,
    Case,
    data_url,
    encoded,
    exchange,
    image_body,
    request,
    run_case,
)

GATE_CASES = TOKENS + HTTP + PATHS + BODIES + COSTS + CORS


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", GATE_CASES, ids=[case.name for case in GATE_CASES])
def test_hostile_request_is_refused_and_never_reaches_llama_server(case: Case) -> None:
    run_case(case)


def test_http10_with_transfer_encoding_is_refused_as_faulty_framing() -> None:
    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate() as h:
            body = json.dumps(CHAT).encode()
            raw = request(h.token(), body=b"", version=b"HTTP/1.0").replace(
                b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n"
            ) + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
            response = await exchange(h, raw)
            await asyncio.sleep(0.05)
            assert h.upstream_requests == [], "llama-server received an HTTP/1.0 request framed by Transfer-Encoding"
            assert response.status == 400
            assert response.header(b"connection") == [b"close"]
            assert b"HTTP/1.0 requests may not use Transfer-Encoding." in response.body

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_small_image_is_never_decoded_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1.5 KB WebP may take a second to decode: whatever the body's size, it must not stall the loop."""
    from PIL import Image

    body = image_body(data_url(encoded("PNG"), "image/png"))
    on_loop: list[bool] = []
    open_image = Image.open

    def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return open_image(*args, **kwargs)

    monkeypatch.setattr(Image, "open", watched)

    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate() as h:
            h.behaviour.vision = True
            response = await exchange(h, request(h.token(), body=body))
            assert response.status == 200
            assert len(h.upstream_requests) == 1
            assert on_loop and not any(on_loop), "an image was decoded on the gate's event loop"

    asyncio.run(asyncio.wait_for(main(), 20))


def test_held_streams_do_not_count_against_the_per_address_cap() -> None:
    """Only requests still arriving count: a client holding streams (the benchmark's 1,000) may open more."""

    async def main() -> None:
        from gate_fakes import running_gate

        # The per-user stream cap (4 for a user other than the owner) is another bound: lifted here.
        async with running_gate(max_pending_per_address=2, streams_per_user=10) as h:
            h.behaviour.forever, h.behaviour.delay = True, 0.05
            streams: list[Client] = []
            try:
                for _ in range(4):
                    client = await Client.open(h.port)  # type: ignore[arg-type]
                    streams.append(client)
                    await client.send(chat_request(h.token()))
                    assert (await client.response(head_request=True)).status == 200
                h.behaviour.forever = False
                response = await exchange(h, chat_request(h.token()))
                assert response.status == 200
            finally:
                for client in streams:
                    client.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_an_anonymous_body_reaches_the_broker_as_it_arrives_and_is_never_held_whole() -> None:
    """The broker sees the head at once (and refuses an anonymous caller before the body arrives)."""

    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate() as h:
            client = await Client.open(h.port)  # type: ignore[arg-type]
            try:
                await client.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\n"
                                  b"Content-Length: 20000000\r\n\r\n" + b"x" * 1000)
                deadline = time.monotonic() + 30  # a wait, not a bound: the body never completes
                while h.broker.connections == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert h.broker.connections == 1, "the gate held the body instead of relaying it"
                connection = next(iter(h.server.gate.connections))
                assert len(connection.core.body) == 0  # type: ignore[attr-defined]  # a ClientConnection
            finally:
                client.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_chunked_body_is_relayed_to_the_broker_chunk_by_chunk() -> None:
    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate() as h:
            client = await Client.open(h.port)  # type: ignore[arg-type]
            try:
                await client.send(b"POST /tools/echo HTTP/1.1\r\nHost: gate\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"3\r\nabc\r\n")
                await asyncio.sleep(0.1)
                await client.send(b"3\r\ndef\r\n0\r\n\r\n")
                echo = (await client.response()).json()
            finally:
                client.close()
            assert echo["body"] == "abcdef"

    asyncio.run(asyncio.wait_for(main(), 20))


def test_forwarded_headers_count_only_from_a_trusted_proxy() -> None:
    async def main() -> None:
        from gate_fakes import running_gate

        forged = b"GET /x HTTP/1.1\r\nHost: gate\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\r\n"
        async with running_gate() as h:
            headers = dict((await exchange(h, forged)).json()["headers"])
            assert (headers["X-Forwarded-For"], headers["X-Forwarded-Proto"]) == ("127.0.0.1", "http")
        async with running_gate(trusted_proxies=["127.0.0.1"]) as h:
            headers = dict((await exchange(h, forged)).json()["headers"])
            assert (headers["X-Forwarded-For"], headers["X-Forwarded-Proto"]) == ("203.0.113.9", "https")

    asyncio.run(asyncio.wait_for(main(), 20))


def test_the_case_names_are_unique_and_there_are_enough() -> None:
    names = [case.name for case in GATE_CASES]
    assert len(set(names)) == len(names)
    assert len(names) >= 50


def test_a_valid_request_still_passes_so_the_refusals_above_mean_something() -> None:
    """The control case: the same harness forwards a well-formed request exactly once."""

    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate() as h:
            response = await exchange(h, chat_request(h.token()))
            assert response.status == 200
            assert len(h.upstream_requests) == 1

    asyncio.run(asyncio.wait_for(main(), 20))


def test_headers_a_preflight_allows_never_reach_llama_server() -> None:
    """Any header name passes the preflight, so the forwarded head must still be built from an allow-list."""

    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate(**TWO_PORT) as h:
            extra = origin_header(APP.encode()) + b"X-Api-Key: sk-client\r\nCookie: s=1\r\nX-Stainless-Os: Linux\r\n"
            response = await exchange(h, request(h.token(origin=APP), headers=extra))
            assert response.status == 200
            (forwarded,) = h.upstream_requests
            names = {name.lower() for name, _ in forwarded.headers}
            assert not names & {b"x-api-key", b"cookie", b"x-stainless-os", b"origin"}
            assert all(b"sk-client" not in value for _, value in forwarded.headers)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_refusal_before_the_body_reaches_a_client_still_sending_it_without_a_reset() -> None:
    """The gate answers 413 from the head and closes, while the client's body is still arriving: the
    answer must reach the client. Closed at once with unread bytes, the kernel answers them with a reset,
    which destroys the answer the client has not read yet (RFC 9112 9.6: close in halves)."""

    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate() as h:
            client = await Client.open(h.port)  # type: ignore[arg-type]
            try:
                client.writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\n"
                                    b"Content-Length: 52428800\r\n\r\n" + b"x" * (2 << 20))
                with contextlib.suppress(ConnectionError):
                    await client.writer.drain()
                await asyncio.sleep(0.5)  # the answer and the close are sent; more bytes reach the gate
                answer = await client.response(timeout=30)
            finally:
                client.close()
            assert answer.status == 413

    asyncio.run(asyncio.wait_for(main(), 60))
