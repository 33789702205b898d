"""`--issuer-jwks` end to end on loopback: a gate pulls broker B's JWKS over TLS from a private CA.

The gate runs with its fakes (`gate_fakes.running_gate`: its own broker is broker-test); broker B is
a TLS server (`tls_jwks.JwksServer`) whose certificate a private CA signed, the CA given as
`jwks_ca_file`. Tokens go through the lane to the fake llama-server.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from gate_fakes import ISSUER, Client, Harness, chat_request, running_gate
from tls_jwks import JwksServer, Pki, make_pki

from broker.signing_keys import SigningKey
from llama_launcher.gate.jwks_document import MAX_JWKS_BYTES, JwksSource
from llama_launcher.gate.jwks_pull import RemoteJwks, tls_context
from llama_launcher.gate.keyset import SOURCE_WAIT, KeySet

B = "broker-b"
Scenario = Callable[[Harness, JwksServer, SigningKey], Awaitable[None]]


def run(scenario: Scenario, *, other_ca: bool = False, **settings: Any) -> None:
    """`other_ca`: the server's certificate comes from a CA the gate was not given."""

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="jw-") as base:
            pki = make_pki(Path(base) / "ca")
            served: Pki = make_pki(Path(base) / "other", "another-ca") if other_ca else pki
            key_b = SigningKey.generate("ES256")
            server = JwksServer(served, {"keys": [dict(key_b.public_jwk)]})
            await server.start()
            try:
                async with running_gate(issuer=[ISSUER, B], issuer_jwks=[[B, server.url]],
                                        jwks_ca_file=str(pki.ca_file), **settings) as harness:
                    await scenario(harness, server, key_b)
            finally:
                await server.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


async def status_of(h: Harness, token: str) -> tuple[int, str | None]:
    """One lane request with `token`: its status, and the refusal's reason when it was refused."""
    assert h.port is not None
    client = await Client.open(h.port)
    try:
        await client.send(chat_request(token))
        response = await client.response()
    finally:
        client.close()
    reason = response.json()["error"]["reason"] if response.status != 200 else None
    return response.status, reason


def test_a_token_of_broker_b_verifies_with_bs_keys_for_bs_issuer_only() -> None:
    async def scenario(h: Harness, server: JwksServer, key_b: SigningKey) -> None:
        assert await status_of(h, h.token(key=key_b, issuer=B)) == (200, None)
        assert await status_of(h, h.token(key=key_b, issuer=ISSUER)) == (401, "wrong_issuer")
        assert await status_of(h, h.token(issuer=B)) == (401, "wrong_issuer")  # A's key, B's name
        assert await status_of(h, h.token()) == (200, None)  # A's own tokens go on as before
        assert await status_of(h, h.token(key=SigningKey.generate("ES256"), issuer=B)) == (401, "unknown_key")
        assert [r[0] for r in server.requests][:1] == ["/.well-known/jwks.json"]

    run(scenario)


def test_bs_rotated_key_is_picked_up_by_the_unknown_kid_pull_and_a_dropped_key_goes() -> None:
    async def scenario(h: Harness, server: JwksServer, key_b: SigningKey) -> None:
        successor = SigningKey.generate("EdDSA")
        old_etag, pulls = server.etag, len(server.requests)
        server.jwks = {"keys": [dict(key_b.public_jwk), dict(successor.public_jwk)]}  # published first
        assert await status_of(h, h.token(key=successor, issuer=B)) == (200, None)
        assert server.requests[pulls:] == [("/.well-known/jwks.json", old_etag, 200)]  # one pull, conditional
        server.jwks = {"keys": [dict(successor.public_jwk)]}  # B retired its old key
        await h.server.keyset.refresh()
        assert await status_of(h, h.token(key=key_b, issuer=B)) == (401, "unknown_key")
        assert await status_of(h, h.token(key=successor, issuer=B)) == (200, None)

    run(scenario)


def test_pulls_are_conditional_and_a_304_keeps_the_keys() -> None:
    async def scenario(h: Harness, server: JwksServer, key_b: SigningKey) -> None:
        first = server.requests[0]
        assert first[1] is None and first[2] == 200
        await h.server.keyset.refresh()
        assert server.requests[-1] == (first[0], server.etag, 304)
        assert await status_of(h, h.token(key=key_b, issuer=B)) == (200, None)

    run(scenario)


def test_the_interval_pull_follows_b_without_any_token() -> None:
    async def scenario(h: Harness, server: JwksServer, key_b: SigningKey) -> None:
        successor = SigningKey.generate("ES256")
        server.jwks = {"keys": [dict(successor.public_jwk)]}
        for _ in range(100):
            if successor.kid in h.server.keyset.trusted.checks:
                break
            await asyncio.sleep(0.05)
        assert successor.kid in h.server.keyset.trusted.checks
        assert key_b.kid not in h.server.keyset.trusted.checks

    run(scenario, jwks_interval=0.2)


def test_an_idle_gate_pulls_once_at_start_with_the_default_interval() -> None:
    async def scenario(h: Harness, server: JwksServer, key_b: SigningKey) -> None:
        await asyncio.sleep(1.5)
        assert len(server.requests) == 1

    run(scenario, jwks_interval=30.0)


def test_a_server_that_is_down_keeps_the_keys_and_is_followed_again(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness, server: JwksServer, key_b: SigningKey) -> None:
        await server.stop()
        caplog.set_level(logging.INFO)
        await h.server.keyset.refresh()
        assert await status_of(h, h.token(key=key_b, issuer=B)) == (200, None)
        assert "cannot pull: cannot connect; keeping the last 1 keys" in caplog.text
        assert "/.well-known" not in caplog.text and f"127.0.0.1:{server.port}" in caplog.text
        health = await h.server.gate.health_answer()
        assert health["jwks"][0]["ok"] is False and health["jwks"][0]["keys"] == 1
        await server.start()
        await h.server.keyset.refresh()
        assert "pulling again" in caplog.text
        (fresh,) = (await h.server.gate.health_answer())["jwks"]
        assert 0 <= fresh.pop("age_s") < 5
        assert fresh == {"issuer": B, "host": f"127.0.0.1:{server.port}", "keys": 1, "ok": True}

    run(scenario)


def _redirect(server: JwksServer, location: bytes) -> None:
    server.status = 302
    server.extra_headers.append((b"location", location))


@pytest.mark.parametrize(("change", "words"), [
    (lambda s: setattr(s, "body", b" " * (MAX_JWKS_BYTES + 10)), "larger than 65536 bytes"),
    (lambda s: setattr(s, "body", b"<html>"), "not JSON"),
    (lambda s: _redirect(s, b"http://127.0.0.1:1/jwks"), "answered 302"),
    (lambda s: setattr(s, "jwks", {"nope": 1}), "not a JWKS"),
    (lambda s: setattr(s, "jwks", {"keys": []}), "the JWKS holds no usable key (0 skipped)"),
])
def test_a_bad_answer_keeps_the_keys(change: Callable[[JwksServer], Any], words: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness, server: JwksServer, key_b: SigningKey) -> None:
        change(server)
        await h.server.keyset.refresh()
        assert words in caplog.text
        assert await status_of(h, h.token(key=key_b, issuer=B)) == (200, None)

    run(scenario)


def test_a_skipped_key_is_logged_with_its_position_and_the_rest_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness, server: JwksServer, key_b: SigningKey) -> None:
        server.jwks = {"keys": [{**dict(key_b.public_jwk), "kid": "enc", "use": "enc"}, dict(key_b.public_jwk)]}
        await h.server.keyset.refresh()
        assert "skipped key 0: not a signature key (use)" in caplog.text
        assert await status_of(h, h.token(key=key_b, issuer=B)) == (200, None)

    run(scenario)


def test_a_certificate_not_from_the_ca_loads_no_keys(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness, server: JwksServer, key_b: SigningKey) -> None:
        assert "its TLS certificate is not trusted (see --jwks-ca-file)" in caplog.text
        assert server.requests == []  # the handshake failed: no request was ever sent
        assert await status_of(h, h.token(key=key_b, issuer=B)) == (401, "unknown_key")
        assert await status_of(h, h.token()) == (200, None)

    run(scenario, other_ca=True)


def test_a_plain_http_source_is_refused_before_the_gate_starts() -> None:
    async def main() -> None:
        async with running_gate(issuer=[ISSUER, B], issuer_jwks=[[B, "http://127.0.0.1:1/jwks"]]):
            raise AssertionError("the gate started")

    with pytest.raises(ValueError, match="only https://"):
        asyncio.run(main())


def test_a_source_that_never_answers_holds_a_refresh_two_seconds_at_most() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await release.wait()  # accepts, never speaks TLS
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        keyset = KeySet("/nonexistent/control.sock", sources=[
            RemoteJwks(JwksSource(B, f"https://127.0.0.1:{port}/jwks"), tls_context(None))], own=frozenset())
        # The source never answers, so an unbounded refresh would never return: returning within a
        # wide margin of SOURCE_WAIT proves the bound without timing a loaded machine.
        assert not await asyncio.wait_for(keyset.refresh(), SOURCE_WAIT * 10)
        release.set()  # the server hangs up: the pull still under way fails and closes its socket
        assert not await keyset.sources[0].pull()
        await keyset.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 60))
