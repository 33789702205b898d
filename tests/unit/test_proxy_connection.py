"""The gate's I/O shell, in-process: a connection's life (Nagle, Expect, back-pressure, TLS, closing) and
the health answers."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from gate_fakes import (
    Client,
    Harness,
    chat_request,
)
from gate_scenarios import ask, run
from waiting import until

from llama_launcher.gate.proxy import UNSENT_LOWAT
from llama_launcher.tls import self_signed_pair

# -- the connection's life -------------------------------------------------------------------


def _served_socket_option(client_address: tuple[str, int], option: int) -> int:
    """A TCP option on the gate's side of the connection from `client_address`: the gate runs in this
    process, so its accepted socket is one of this process's descriptors."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            try:
                if sock.family == socket.AF_INET and sock.getpeername() == client_address:
                    return sock.getsockopt(socket.IPPROTO_TCP, option)
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
        assert _served_socket_option(client.writer.get_extra_info("sockname"), socket.TCP_NODELAY) != 0
        client.close()

    run(scenario)


def test_a_client_that_reads_nothing_fills_the_gates_buffer_after_kilobytes_not_megabytes() -> None:
    """Without a cap on unsent bytes, Linux lets a client that reads nothing take megabytes of an answer
    into the gate's send buffer before the write buffer fills and `--send-timeout` counts; the gate's
    side of each connection holds the cap (the option is checked, not a fill, which depends on the
    kernel's tuning)."""

    async def scenario(h: Harness) -> None:
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        assert (await client.response()).status == 200
        unsent = _served_socket_option(client.writer.get_extra_info("sockname"), socket.TCP_NOTSENT_LOWAT)
        assert unsent == UNSENT_LOWAT <= 64 * 1024
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


def _upstream_paused(h: Harness) -> bool:
    """Whether the gate's one connection has stopped reading its upstream."""
    connections = list(h.server.gate.connections)
    relay = connections[0].relay if len(connections) == 1 else None
    return relay is not None and not relay.transport.is_reading()


def test_a_client_that_does_not_read_pauses_the_upstream() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.chunk_bytes = 64 * 1024
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        await until(lambda: _upstream_paused(h), within=10, what="the upstream paused")  # fills in well under 1 s
        (connection,) = h.server.gate.connections
        assert connection.transport.get_write_buffer_size() < 4 * 1024 * 1024
        client.close()

    run(scenario)


def test_tls_public_listener_tells_the_broker_https(tmp_path: Any) -> None:
    import ssl

    cert, key = self_signed_pair(tmp_path / "keys", "127.0.0.1")  # the launcher's own, a leaf for localhost

    async def scenario(h: Harness) -> None:
        context = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port, ssl=context, server_hostname="localhost")
        client = Client(reader, writer)
        await client.send(b"GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n")
        echo = (await client.response()).json()
        assert ["X-Forwarded-Proto", "https"] in echo["headers"]
        client.close()

    run(scenario, tls_cert=str(cert), tls_key=str(key))


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
