"""The gate's I/O shell, in-process: what it refuses before anything reaches llama-server (framing,
request lines, sizes, slow clients, tokens), and what a refusal after verification costs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
from gate_fakes import (
    Client,
    Harness,
    chat_request,
)
from gate_scenarios import CHAT, ask, run

from broker.signing_keys import SigningKey

# -- refusals before anything reaches llama-server ----------------------------------------------

FRAMING = [
    ("cl_and_te", b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", 400, "ambiguous_framing"),
    ("duplicate_cl", b"Content-Length: 4\r\nContent-Length: 4\r\n", 400, "duplicate_content_length"),
    ("listed_cl", b"Content-Length: 4, 4\r\n", 400, "bad_content_length"),
    ("negative_cl", b"Content-Length: -1\r\n", 400, "bad_content_length"),
    ("malformed_cl", b"Content-Length: 4x\r\n", 400, "bad_content_length"),
    ("two_te", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400, "bad_transfer_encoding"),
    ("gzip_te", b"Transfer-Encoding: gzip\r\n", 400, "bad_transfer_encoding"),
    ("obs_fold", b"X-A: 1\r\n  folded\r\n", 400, "obs_fold"),
    ("nul", b"X-A: a\x00b\r\n", 400, "bad_header"),
    ("bare_cr", b"X-A: a\rb\r\n", 400, "bad_line_ending"),
    ("space_before_colon", b"Content-Length : 4\r\n", 400, "bad_header"),
]


@pytest.mark.parametrize(("name", "headers", "status", "code"), FRAMING, ids=[f[0] for f in FRAMING])
def test_framing_refusals(name: str, headers: bytes, status: int, code: str) -> None:
    async def scenario(h: Harness) -> None:
        raw = (
            b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
            + h.token().encode() + b"\r\nContent-Type: application/json\r\n" + headers + b"\r\nabcd"
        )
        client = await Client.open(h.port)
        await client.send(raw)
        response = await client.response()
        assert response.status == status
        assert response.header(b"connection") == [b"close"]
        assert json.loads(response.body)["error"]["code"] == status
        assert await client.closed()
        assert h.upstream_requests == []

    run(scenario)


REQUEST_LINES = [
    ("absolute_form", b"POST http://gate/direct/v1/chat/completions HTTP/1.1\r\n", 400),
    ("connect", b"CONNECT gate:443 HTTP/1.1\r\n", 405),
    ("http2", b"POST /direct/v1/chat/completions HTTP/2.0\r\n", 505),
    ("bare_lf", b"POST /direct/v1/chat/completions HTTP/1.1\n", 400),
]


@pytest.mark.parametrize(("name", "line", "status"), REQUEST_LINES, ids=[r[0] for r in REQUEST_LINES])
def test_request_line_refusals(name: str, line: bytes, status: int) -> None:
    async def scenario(h: Harness) -> None:
        raw = line + b"Host: g\r\nAuthorization: Bearer " + h.token().encode() + b"\r\nContent-Length: 0\r\n\r\n"
        response = await ask(h, raw)
        assert response.status == status
        assert h.upstream_requests == []
        assert h.broker.requests == []

    run(scenario)


def test_bad_chunk_size_is_refused() -> None:
    async def scenario(h: Harness) -> None:
        raw = (
            b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " + h.token().encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
        )
        response = await ask(h, raw)
        assert response.status == 400
        assert response.json()["error"]["message"] == "The request body's framing is not valid."
        assert h.upstream_requests == []

    run(scenario)


def test_chunked_body_is_accepted_and_reframed_with_content_length() -> None:
    async def scenario(h: Harness) -> None:
        raw = (
            b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " + h.token().encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(CHAT) + CHAT + b"\r\n0\r\n\r\n"
        )
        response = await ask(h, raw)
        assert response.status == 200
        assert h.upstream_requests[0].header(b"Transfer-Encoding") == []

    run(scenario)


def test_a_request_pipelined_after_a_chunked_body_is_read_whole() -> None:
    """The chunked body's end is found exactly, however the bytes arrive: the next request is intact."""

    async def scenario(h: Harness) -> None:
        first = (
            b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " + h.token().encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(CHAT) + CHAT + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        wire = first + chat_request(h.token())
        cut = len(first) - 2  # the first message's last CRLF CRLF arrives split
        client = await Client.open(h.port)  # type: ignore[arg-type]
        try:
            await client.send(wire[:cut])
            await asyncio.sleep(0.05)
            await client.send(wire[cut:])
            assert (await client.response()).status == 200
            assert (await client.response()).status == 200
        finally:
            client.close()
        assert len(h.upstream_requests) == 2

    run(scenario)


def test_an_upgrade_header_never_turns_a_body_into_a_request() -> None:
    """llhttp reads no body after `Upgrade`; the gate frames it by `Content-Length`, so it stays a body."""

    async def scenario(h: Harness) -> None:
        smuggled = chat_request(h.token())
        raw = (b"POST /tools/echo HTTP/1.1\r\nHost: g\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
               b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        await ask(h, raw)
        assert h.upstream_requests == []
        (relayed,) = h.broker.requests
        assert relayed.body == smuggled
        assert b"upgrade" not in {name.lower() for name, _ in relayed.headers}

    run(scenario)


def test_head_over_16kb_gets_431() -> None:
    async def scenario(h: Harness) -> None:
        raw = b"GET /direct/v1/stream HTTP/1.1\r\nHost: g\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n"
        response = await ask(h, raw)
        assert response.status == 431
        assert h.upstream_requests == []

    run(scenario)


def test_body_over_the_limit_gets_413_before_it_is_sent() -> None:
    async def scenario(h: Harness) -> None:
        head = chat_request(h.token(), b"x" * 2000).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        response = await ask(h, head)  # the body itself is never sent
        assert response.status == 413
        assert h.upstream_requests == []

    run(scenario, max_body_bytes=1000)


def test_chunked_body_over_the_limit_gets_413() -> None:
    async def scenario(h: Harness) -> None:
        raw = (
            b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " + h.token().encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"200\r\n" + b"x" * 512 + b"\r\n") * 3
        )
        response = await ask(h, raw)
        assert response.status == 413
        assert h.upstream_requests == []

    run(scenario, max_body_bytes=1000)


def test_slow_head_gets_408_and_close() -> None:
    async def scenario(h: Harness) -> None:
        client = await Client.open(h.port)
        await client.send(b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: g\r\n")
        started = time.monotonic()
        response = await client.response(timeout=15)
        assert response.status == 408
        # Not before the head timeout (a lower bound, which load cannot break); the upper bound is the
        # client's wide wait: a head that is never finished gets nothing else.
        assert time.monotonic() - started >= 0.2
        assert await client.closed()

    run(scenario, head_timeout=0.3)


def test_idle_kept_alive_connection_is_closed_silently() -> None:
    async def scenario(h: Harness) -> None:
        client = await Client.open(h.port)
        assert await client.closed(timeout=2.0)
        assert client.pending == b""

    run(scenario, head_timeout=0.3)


TOKEN_REFUSALS: list[tuple[str, Callable[[Harness], str | None], str]] = [
    ("missing", lambda h: None, "missing_token"),
    ("garbage", lambda h: "not.a.token", "malformed_token"),
    ("expired", lambda h: h.token(now=time.time() - 100, ttl=30), "token_expired"),
    ("predates_gate", lambda h: h.token(now=time.time() - 60, ttl=300), "token_predates_gate"),
    ("wrong_audience", lambda h: h.token(audience="another-gate"), "wrong_audience"),
    ("unknown_key", lambda h: h.token(key=SigningKey.generate("EdDSA")), "unknown_key"),
]


@pytest.mark.parametrize(("name", "make", "code"), TOKEN_REFUSALS, ids=[t[0] for t in TOKEN_REFUSALS])
def test_token_refusals(name: str, make: Callable[[Harness], str | None], code: str) -> None:
    from llama_direct import refusals

    expected = next(
        cls for cls in vars(refusals).values()
        if isinstance(cls, type) and issubclass(cls, refusals.TokenRefusal) and cls.code == code
    )

    async def scenario(h: Harness) -> None:
        token = make(h)
        response = await ask(h, chat_request(token))
        assert response.status == 401
        assert response.json() == {
            "error": {"message": expected.message, "type": "authentication_error", "code": 401, "reason": code}
        }
        if token:
            assert token.encode() not in response.body
        assert h.upstream_requests == []

    run(scenario)


def test_token_in_the_query_string_is_never_used() -> None:
    async def scenario(h: Harness) -> None:
        token = h.token()
        raw = chat_request(None).replace(b"completions HTTP", b"completions?access_token=" + token.encode() + b" HTTP")
        response = await ask(h, raw)
        assert response.status == 401
        assert response.json()["error"]["message"] == "A bearer token is required."
        with_header = await ask(h, chat_request(token).replace(b"completions HTTP", b"completions?x=1 HTTP"))
        assert with_header.status == 400
        assert h.upstream_requests == []

    run(scenario)


def test_revoked_token_is_refused_after_the_next_pull() -> None:
    async def scenario(h: Harness) -> None:
        token = h.token()
        h.revocations.revoke("alice", time.time() + 1)
        assert await h.server.keyset.refresh()
        response = await ask(h, chat_request(token))
        assert response.status == 401
        assert response.json()["error"]["message"] == "The token has been revoked."

    run(scenario)


def test_a_new_kid_is_pulled_at_once() -> None:
    async def scenario(h: Harness) -> None:
        new_key = SigningKey.generate("EdDSA")
        h.jwks = {"keys": [dict(h.key.public_jwk), dict(new_key.public_jwk)]}
        response = await ask(h, chat_request(h.token(key=new_key)))
        assert response.status == 200
        assert sum(1 for r in h.control.requests if r.target == "/state?known=") == 2

    run(scenario)


def test_a_request_refused_after_verification_still_spends_the_token() -> None:
    """The use is spent once the token verifies: a refused body cannot be retried (and decoded) again."""

    async def scenario(h: Harness) -> None:
        token = h.token()
        denied = await ask(h, chat_request(token, b'{"messages":[],"id_slot":1}'))
        assert denied.status == 400
        assert "id_slot" in denied.json()["error"]["message"]
        again = await ask(h, chat_request(token))
        assert (again.status, again.json()["error"]["reason"]) == (401, "token_spent")
        assert h.upstream_requests == []

    run(scenario)


def test_unreachable_upstream_gives_502_and_the_token_stays_spent() -> None:
    async def scenario(h: Harness) -> None:
        token = h.token()
        await h.llama.stop()
        response = await ask(h, chat_request(token))
        assert response.status == 502
        assert response.json()["error"]["type"] == "server_error"
        assert b"llama.sock" not in response.body
        await h.llama.start()
        assert (await ask(h, chat_request(token))).status == 401
        assert (await ask(h, chat_request(h.token()))).status == 200

    run(scenario)
