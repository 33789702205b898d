"""A forged user header never reaches the broker: `--trusted-user-header` is believed only on a socket
whose peer is a `--trusted-proxy`, and the gate's own forwarded header is never taken from a client.
Checked on the bytes the broker receives (the fake broker echoes its request head)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from hostile_support import exchange

from llama_direct.header_users import FORWARDED_USER_HEADER
from llama_launcher.gate.config import Listener

FORWARDED = FORWARDED_USER_HEADER.encode()
HEADER = "x-remote-user"


def _me(*headers: bytes) -> bytes:
    return b"GET /v1/me HTTP/1.1\r\nHost: gate\r\n" + b"".join(line + b"\r\n" for line in headers) + b"\r\n"


FORGERIES = [
    _me(b"X-Remote-User: admin"),
    _me(b"x-remote-user: admin", b"X-REMOTE-USER: root"),
    _me(b"X-Llama-Direct-User: admin"),
    _me(b"X-Remote-User: admin", b"X-Llama-Direct-User: root"),
    _me(b"Connection: x-remote-user", b"X-Remote-User: admin"),
    _me(b"X-Remote-User:admin"),
    _me(b"X-Remote-User: \tadmin\t"),
]


def _users_seen(echo: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in echo["headers"]
            if name.lower() in (HEADER, FORWARDED_USER_HEADER) or "admin" in value or "root" in value]


@pytest.mark.parametrize("trusted", [[], ["10.9.9.9"]], ids=["no-proxy", "other-proxy"])
@pytest.mark.parametrize("raw", FORGERIES, ids=["plain", "twice", "forwarded", "both", "connection", "no-space",
                                                 "tabs"])
def test_an_untrusted_peer_s_user_header_never_reaches_the_broker(trusted: list[str], raw: bytes) -> None:
    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate(trusted_user_header=HEADER, trusted_proxies=trusted) as h:
            response = await exchange(h, raw)
            assert response.status == 200
            assert _users_seen(response.json()) == []

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_trusted_proxy_s_header_reaches_the_broker_as_the_gate_s_own_and_nothing_else_does() -> None:
    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate(trusted_user_header=HEADER, trusted_proxies=["127.0.0.1"]) as h:
            echo = (await exchange(h, _me(b"X-Remote-User: ann", b"X-Llama-Direct-User: admin"))).json()
            assert _users_seen(echo) == [(FORWARDED_USER_HEADER, "ann")]
        async with running_gate(trusted_proxies=["127.0.0.1"]) as h:  # no header configured: none believed
            echo = (await exchange(h, _me(b"X-Remote-User: ann", b"X-Llama-Direct-User: admin"))).json()
            assert [(n, v) for n, v in _users_seen(echo) if n.lower() == FORWARDED_USER_HEADER] == []

    asyncio.run(asyncio.wait_for(main(), 20))


def test_two_port_mode_the_app_port_strips_it_and_the_lane_port_relays_nothing() -> None:
    """In two-port mode the broker is reached only through the gate's app port (the lane's port serves
    the lane alone), and the app port is the same relay: a forged header is dropped there too."""

    async def main() -> None:
        from gate_fakes import running_gate

        async with running_gate(trusted_user_header=HEADER, two_port=True,
                                allowed_origins=["https://app.example"]) as h:
            lane = await exchange(h, _me(b"X-Remote-User: admin", b"X-Llama-Direct-User: admin"))
            assert lane.status == 404 and h.broker.connections == 0
            app = socket.socket()
            app.bind(("127.0.0.1", 0))
            app.listen(16)
            await h.server._listen(app, Listener(lane=False, broker=True))  # what serve passes as the app port
            h.port = app.getsockname()[1]
            echo = (await exchange(h, _me(b"X-Remote-User: admin", b"X-Llama-Direct-User: root"))).json()
            assert echo["target"] == "/v1/me" and _users_seen(echo) == []

    asyncio.run(asyncio.wait_for(main(), 20))
