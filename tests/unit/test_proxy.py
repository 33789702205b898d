"""The gate's I/O shell, run in-process against fake upstreams (see gate_fakes.py).

Each test starts a whole gate (public TCP listener on loopback, private unix socket) in a fresh
temp dir, with a fake llama-server that records every request it receives. Here: the stream, the broker
relay, two-port mode and the private socket; the refusals in test_proxy_refusals.py, the connection's
life in test_proxy_connection.py.
"""

from __future__ import annotations

import asyncio
import json
import os

from gate_fakes import (
    MASTER_KEY,
    Client,
    Harness,
    chat_request,
    sse_body,
)
from gate_scenarios import ask, run


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


def test_a_small_body_goes_to_the_broker_with_its_head_so_an_answer_from_the_head_is_not_lost() -> None:
    """CI's flake: a broker that answers from the head (an anonymous negotiation: 401) closes, and a
    body the gate wrote after that close failed and took the unread 401 with it (502 app_unavailable).
    A client that sends head and body in two writes now reaches the broker in one."""

    async def scenario(h: Harness) -> None:
        await h.broker.stop()
        reads: list[bytes] = []

        async def answer_from_the_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            reads.append(await reader.read(65536))
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()

        server = await asyncio.start_unix_server(answer_from_the_head, h.broker.path)
        try:
            client = await Client.open(h.port)  # type: ignore[arg-type]
            await client.send(b"POST /direct-stream HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 2\r\n\r\n")
            await asyncio.sleep(0.05)
            await client.send(b"{}")
            assert (await client.response()).status == 401
            client.close()
        finally:
            server.close()
        (first,) = reads
        assert first.startswith(b"POST /direct-stream ") and first.endswith(b"\r\n\r\n{}")

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
