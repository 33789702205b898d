"""The gate's I/O shell, run in-process against fake upstreams (see gate_fakes.py).

Each test starts a whole gate (public TCP listener on loopback, private unix socket) in a fresh
temp dir, with a fake llama-server that records every request it receives.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from gate_fakes import (
    MASTER_KEY,
    Client,
    Harness,
    chat_request,
    running_gate,
    sse_body,
)

from broker.signing_keys import SigningKey

CHAT = b'{"messages":[{"role":"user","content":"hi"}],"stream":true}'


def run(scenario: Callable[[Harness], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        async with running_gate(**settings) as harness:
            await scenario(harness)

    asyncio.run(asyncio.wait_for(main(), 20))


async def ask(harness: Harness, raw: bytes, *, where: int | str | None = None) -> Any:
    client = await Client.open(where if where is not None else harness.port)  # type: ignore[arg-type]
    try:
        await client.send(raw)
        return await client.response()
    finally:
        client.close()


# -- the stream ------------------------------------------------------------------------------


def test_stream_body_passes_byte_identical_and_upstream_gets_only_the_master_key() -> None:
    async def scenario(h: Harness) -> None:
        response = await ask(h, chat_request(h.token(), extra=b"Cookie: s=1\r\nX-Forwarded-For: 9.9.9.9\r\n"))
        assert response.status == 200
        assert response.raw_body == sse_body(5)
        assert response.headers == [
            (b"Server", b"llama.cpp"),
            (b"X-Accel-Buffering", b"no"),
            (b"Content-Type", b"text/event-stream"),
            (b"Transfer-Encoding", b"chunked"),
        ]
        (received,) = h.upstream_requests
        assert received.method == "POST"
        assert received.target == "/v1/chat/completions"
        assert received.headers == [
            (b"Host", b"llama-server"),
            (b"Authorization", b"Bearer " + MASTER_KEY.encode()),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(received.body)).encode()),
            (b"Connection", b"close"),
        ]
        assert json.loads(received.body) == {
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "model": "smollm2",
            "max_tokens": 64,
        }

    run(scenario)


def test_conversation_id_reaches_llama_server_only_from_the_grant() -> None:
    async def scenario(h: Harness) -> None:
        token = h.token(conversation_id="conv-1")
        response = await ask(h, chat_request(token, extra=b"X-Conversation-Id: conv-1\r\n"))
        assert response.status == 200
        assert h.upstream_requests[0].header(b"X-Conversation-Id") == [b"conv-1"]
        other = await ask(h, chat_request(h.token(conversation_id="conv-1"), extra=b"X-Conversation-Id: x\r\n"))
        assert other.status == 403
        assert len(h.upstream_requests) == 1

    run(scenario)


def test_keep_alive_serves_two_requests_each_with_its_own_token() -> None:
    async def scenario(h: Harness) -> None:
        client = await Client.open(h.port)
        for _ in range(2):
            await client.send(chat_request(h.token()))
            response = await client.response()
            assert response.status == 200
            assert response.raw_body == sse_body(5)
        client.close()
        first, second = h.upstream_requests
        assert first.connection != second.connection  # a fresh upstream connection per request

    run(scenario)


def test_pipelined_second_request_with_the_spent_token_gets_401() -> None:
    async def scenario(h: Harness) -> None:
        token = h.token()
        client = await Client.open(h.port)
        await client.send(chat_request(token) + chat_request(token))
        first = await client.response()
        second = await client.response()
        client.close()
        assert first.status == 200
        assert second.status == 401
        assert second.json()["error"] == {
            "message": "The token has already been used: ask for a new one.",
            "type": "authentication_error",
            "code": 401,
            "reason": "token_spent",
        }
        assert len(h.upstream_requests) == 1

    run(scenario)


def test_token_with_two_uses_serves_two_requests() -> None:
    async def scenario(h: Harness) -> None:
        token = h.token(uses=2)
        statuses = [(await ask(h, chat_request(token))).status for _ in range(3)]
        assert statuses == [200, 200, 401]

    run(scenario)


def test_client_disconnect_closes_the_upstream_connection_at_once() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever = True
        h.behaviour.delay = 0.02
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        await client.reader.readuntil(b"\r\n\r\n")
        await client.reader.read(100)
        client.writer.transport.abort()
        # The fake upstream streams forever, so its connection closes only if the gate closes it:
        # that it closes at all is the point, and the wide wait keeps a loaded machine out of it.
        for _ in range(1000):
            if h.llama.closed_at:
                break
            await asyncio.sleep(0.01)
        assert h.llama.closed_at

    run(scenario)


def test_upstream_gone_mid_stream_truncates_and_closes_the_client() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.die_after = 2
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        response = await client.response()
        assert response.status == 200
        assert response.raw_body == sse_body(5)[: len(response.raw_body)]
        assert not response.raw_body.endswith(b"0\r\n\r\n")
        assert await client.closed()

    run(scenario)


def test_http10_client_gets_the_body_unchunked_then_close() -> None:
    async def scenario(h: Harness) -> None:
        raw = chat_request(h.token()).replace(b"HTTP/1.1", b"HTTP/1.0")
        client = await Client.open(h.port)
        await client.send(raw)
        response = await client.response()
        assert response.status == 200
        assert response.header(b"transfer-encoding") == []
        assert response.header(b"connection") == [b"close"]
        assert response.body == b"".join(
            line for line in sse_body(5).split(b"\r\n")[1::2] if line
        )
        assert await client.closed()

    run(scenario)


def test_stream_resume_and_cancel_routes_use_the_grant_conversation() -> None:
    async def scenario(h: Harness) -> None:
        token = h.token(scope="resume", routes=(("GET", "/v1/stream"),), conversation_id="c1")
        response = await ask(h, b"GET /direct/v1/stream?conv_id=c1&from=10 HTTP/1.1\r\nHost: g\r\n"
                             b"Authorization: Bearer " + token.encode() + b"\r\n\r\n")
        assert response.status == 200
        (received,) = h.upstream_requests
        assert (received.method, received.target) == ("GET", "/v1/stream?conv_id=c1&from=10")
        assert received.header(b"Content-Length") == []

    run(scenario)


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


# -- the broker relay ------------------------------------------------------------------------


def test_broker_relay_keeps_everything_but_sets_forwarding_headers() -> None:
    async def scenario(h: Harness) -> None:
        client = await Client.open(h.port)
        await client.send(
            b"POST /direct-stream?x=1 HTTP/1.1\r\nHost: example.test:8000\r\nCookie: session=abc\r\n"
            b"Authorization: Bearer access\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
            b"Forwarded: for=6.6.6.6\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        echo = (await client.response()).json()
        assert echo["method"] == "POST"
        assert echo["target"] == "/direct-stream?x=1"
        assert echo["body"] == "{}"
        assert echo["headers"] == [
            ["Host", "example.test:8000"],
            ["Cookie", "session=abc"],
            ["Authorization", "Bearer access"],
            ["Content-Type", "application/json"],
            ["X-Forwarded-For", "127.0.0.1"],
            ["X-Forwarded-Proto", "http"],
            ["Content-Length", "2"],
            ["Connection", "close"],
        ]
        await client.send(b"GET /login?token=t HTTP/1.1\r\nHost: h\r\n\r\n")
        login = await client.response()
        assert login.status == 303
        assert login.header(b"location") == [b"./"]
        assert login.header(b"set-cookie") == [b"session=abc; HttpOnly; SameSite=Strict", b"other=1"]
        await client.send(b"GET /sse HTTP/1.1\r\nHost: h\r\n\r\n")
        sse = await client.response()
        assert sse.raw_body == sse_body(3)
        client.close()
        assert len(h.broker.requests) == 3

    run(scenario)


def test_paths_that_only_look_like_the_lane_go_to_the_broker() -> None:
    async def scenario(h: Harness) -> None:
        for target in (b"/direct", b"/directx/v1/chat/completions", b"/DIRECT/v1/chat/completions"):
            response = await ask(h, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            assert response.json()["target"] == target.decode()
        assert h.upstream_requests == []

    run(scenario)


def test_broker_down_gives_502() -> None:
    async def scenario(h: Harness) -> None:
        await h.broker.stop()
        response = await ask(h, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert response.status == 502
        assert json.loads(response.body)["error"] == {
            "message": "The app is not reachable right now; it may be restarting.",
            "type": "server_error",
            "code": 502,
            "reason": "app_unavailable",
        }

    run(scenario)


# -- two-port mode ---------------------------------------------------------------------------

APP = "http://app.test:5173"


def test_two_port_preflight_allowed_and_foreign() -> None:
    async def scenario(h: Harness) -> None:
        preflight = (
            b"OPTIONS /direct/v1/chat/completions HTTP/1.1\r\nHost: g\r\nOrigin: %s\r\n"
            b"Access-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: authorization, content-type\r\n\r\n"
        )
        allowed = await ask(h, preflight % APP.encode())
        assert allowed.status == 204
        assert allowed.header(b"access-control-allow-origin") == [APP.encode()]
        assert allowed.header(b"access-control-allow-headers") == [b"authorization, content-type"]
        assert allowed.header(b"vary") == [b"Origin, Access-Control-Request-Headers"]
        foreign = await ask(h, preflight % b"http://evil.test")
        assert foreign.status == 403
        assert foreign.header(b"access-control-allow-origin") == []

    run(scenario, two_port=True, allowed_origins=[APP])


def test_two_port_lane_answers_carry_cors_for_the_grant_origin_only() -> None:
    async def scenario(h: Harness) -> None:
        origin = b"Origin: " + APP.encode() + b"\r\n"
        ok = await ask(h, chat_request(h.token(origin=APP), extra=origin))
        assert ok.status == 200
        assert ok.header(b"access-control-allow-origin") == [APP.encode()]  # llama-server's "*" is gone
        refused = await ask(h, chat_request(None, extra=origin))
        assert refused.status == 401
        assert refused.header(b"access-control-allow-origin") == [APP.encode()]
        off_lane = await ask(h, b"GET / HTTP/1.1\r\nHost: g\r\n\r\n")
        assert off_lane.status == 404
        assert h.broker.requests == []

    run(scenario, two_port=True, allowed_origins=[APP])


def test_one_port_lane_answers_carry_no_cors() -> None:
    async def scenario(h: Harness) -> None:
        response = await ask(h, chat_request(h.token()))
        assert [name for name, _ in response.headers if name.lower().startswith(b"access-control")] == []

    run(scenario)


# -- the private socket ----------------------------------------------------------------------


def test_private_socket_health_and_baseline_lane() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.slots_busy = 1
        health = await ask(h, b"GET /health HTTP/1.1\r\nHost: gate\r\n\r\n", where=h.config.private_socket)
        assert health.status == 200
        assert health.json() == {
            "gate": "ok",
            "model_ready": True,
            "model": "smollm2",
            "vision": False,
            "slots": {"total": 4, "busy": 1},
            "router": False,
            "models": [{"id": "smollm2", "status": "loaded", "vision": False}],
            "not_issued_before": h.server.gate.not_issued_before,
        }
        baseline = await ask(h, chat_request(h.token()), where=h.config.private_socket)
        assert baseline.status == 200
        assert baseline.raw_body == sse_body(5)
        other = await ask(h, b"GET /login HTTP/1.1\r\nHost: gate\r\n\r\n", where=h.config.private_socket)
        assert other.status == 404
        assert h.broker.requests == []

    run(scenario)


def test_health_is_cached_for_half_a_second() -> None:
    async def scenario(h: Harness) -> None:
        for _ in range(3):
            await ask(h, b"GET /health HTTP/1.1\r\nHost: gate\r\n\r\n", where=h.config.private_socket)
        assert [r.target for r in h.llama.requests].count("/health") == 1

    run(scenario)


def test_private_socket_is_owner_only() -> None:
    import os
    import stat

    async def scenario(h: Harness) -> None:
        assert stat.S_IMODE(os.stat(h.config.private_socket).st_mode) == 0o600

    run(scenario)


def test_head_answer_for_a_head_request_has_no_body() -> None:
    async def scenario(h: Harness) -> None:
        client = await Client.open(h.port)
        await client.send(b"HEAD /anything HTTP/1.1\r\nHost: h\r\n\r\n")
        response = await client.response(head_request=True)
        assert response.status == 200
        await client.send(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await client.response()).json()["target"] == "/again"
        client.close()

    run(scenario)



# -- the connection's life -------------------------------------------------------------------


def _served_socket_no_delay(client_address: tuple[str, int]) -> int:
    """TCP_NODELAY on the gate's side of the connection from `client_address`: the gate runs in this
    process, so its accepted socket is one of this process's descriptors."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            try:
                if sock.family == socket.AF_INET and sock.getpeername() == client_address:
                    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:
                continue
    raise AssertionError("the gate's side of the connection was not found")


def test_keep_alive_over_tcp_is_not_held_back_by_nagle() -> None:
    """Nagle plus delayed ACKs would cost 40 ms a request; the option is checked, not the clock, which
    a loaded machine would blur."""

    async def scenario(h: Harness) -> None:
        h.behaviour.events = 1
        client = await Client.open(h.port)
        for _ in range(5):
            await client.send(chat_request(h.token()))
            assert (await client.response()).status == 200
        assert _served_socket_no_delay(client.writer.get_extra_info("sockname")) != 0
        client.close()

    run(scenario)


def test_upstream_that_sends_no_head_gets_504() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.silent = True
        response = await ask(h, chat_request(h.token()))
        assert response.status == 504
        assert response.json()["error"]["code"] == 504

    run(scenario, upstream_head_timeout=0.2)


def test_expect_100_continue_is_answered_once_the_token_passed() -> None:
    async def scenario(h: Harness) -> None:
        client = await Client.open(h.port)
        head, _, body = chat_request(h.token(), extra=b"Expect: 100-continue\r\n").partition(b"\r\n\r\n")
        await client.send(head + b"\r\n\r\n")
        interim = await client.reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send(body)
        assert (await client.response()).status == 200
        assert h.upstream_requests[0].header(b"Expect") == []
        client.close()

    run(scenario)


def test_a_client_that_does_not_read_pauses_the_upstream() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.chunk_bytes = 64 * 1024
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        await asyncio.sleep(0.5)
        (connection,) = h.server.gate.connections
        assert connection.transport.get_write_buffer_size() < 4 * 1024 * 1024
        assert connection.relay is not None and not connection.relay.transport.is_reading()
        client.close()

    run(scenario)


def test_tls_public_listener_tells_the_broker_https(tmp_path: Any) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)

    async def scenario(h: Harness) -> None:
        context = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port, ssl=context, server_hostname="localhost")
        client = Client(reader, writer)
        await client.send(b"GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n")
        echo = (await client.response()).json()
        assert ["X-Forwarded-Proto", "https"] in echo["headers"]
        client.close()

    run(scenario, tls_cert=str(cert), tls_key=str(key))


def _self_signed(directory: Any) -> tuple[Any, Any]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_closing_the_gate_drops_live_streams_and_their_upstreams() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever = True
        h.behaviour.delay = 0.01
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        await client.reader.readuntil(b"\r\n\r\n")
        await h.server.close()
        rest = await asyncio.wait_for(client.reader.read(), 2.0)  # whatever was in flight, then EOF
        assert not rest.endswith(b"0\r\n\r\n")
        client.close()
        for _ in range(100):
            if h.llama.closed_at:
                break
            await asyncio.sleep(0.01)
        assert h.llama.closed_at

    run(scenario)


def test_health_reports_vision_from_props() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.vision = True
        health = await ask(h, b"GET /health HTTP/1.1\r\nHost: gate\r\n\r\n", where=h.config.private_socket)
        assert health.json()["vision"] is True
        assert (await h.server.gate.policy_for([h.server.pool.first], "any")).vision is True

    run(scenario)


def test_an_upstream_without_a_key_gets_no_authorization_header() -> None:
    from gate_fakes import StaticUpstream

    async def scenario(h: Harness) -> None:
        h.server.pool.first.upstream = StaticUpstream(h.llama.path, key=None)
        assert (await ask(h, chat_request(h.token()))).status == 200
        assert h.upstream_requests[0].header(b"Authorization") == []

    run(scenario)


def test_health_before_llama_server_is_ready_asks_it_nothing() -> None:
    async def scenario(h: Harness) -> None:
        h.server.pool.first.health.upstream.ready = False  # type: ignore[attr-defined]
        health = await ask(h, b"GET /health HTTP/1.1\r\nHost: gate\r\n\r\n", where=h.config.private_socket)
        assert health.json()["model_ready"] is False
        assert health.json()["slots"] == {"total": None, "busy": None}
        assert h.llama.requests == []

    run(scenario)
