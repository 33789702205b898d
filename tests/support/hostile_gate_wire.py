"""The hostile gate cases of the wire: forged, replayed and misplaced tokens, and HTTP framing that
smuggles, overflows or stalls (`test_hostile_gate.py` runs them, with those of
`hostile_gate_requests.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from gate_fakes import Client, Harness, Response
from hostile_support import (
    CHAT,
    Case,
    claims,
    exchange,
    hs256_with_public_key,
    request,
    send,
    signed,
    swap_payload,
    unsigned,
)

from broker.signing_keys import SigningKey
from llama_direct import refusals

APP = "http://app.test:5173"
EVIL = "http://evil.test"
TWO_PORT = {"two_port": True, "allowed_origins": [APP]}
RESUME = (("GET", "/v1/stream"),)
CHAT_PATH = b"/direct/v1/chat/completions"

# -- tokens ----------------------------------------------------------------------------------------


def _token_case(name: str, make: Any, refusal: type[refusals.TokenRefusal], **extra: Any) -> Case:
    return Case(name, send(lambda h: request(make(h))), 401, refusal.message, **extra)


async def _replay(h: Harness) -> Response:
    token = h.token()
    first = await exchange(h, request(token))
    assert first.status == 200
    return await exchange(h, request(token))


async def _resent_after_a_refusal(h: Harness) -> Response:
    """A request refused after the token verified spent it: the same token cannot try again."""
    token = h.token()
    first = await exchange(h, request(token, body={**CHAT, "id_slot": 0}))
    assert first.status == 400
    return await exchange(h, request(token))


async def _resent_after_a_wrong_route(h: Harness) -> Response:
    token = h.token()
    first = await exchange(h, request(token, target=b"/direct/v1/completions"))
    assert first.status == 403  # a lane route, but not the one this chat token was granted for
    return await exchange(h, request(token))


async def _revoke(h: Harness) -> None:
    h.revocations.revoke("alice", time.time() + 1)
    assert await h.server.keyset.refresh()


def _in_query(h: Harness) -> bytes:
    return request(None, target=CHAT_PATH + b"?access_token=" + h.token().encode())


ATTACKER = SigningKey.generate("EdDSA")
ATTACKER_EC = SigningKey.generate("ES256")


TOKENS = [
    _token_case("alg_none", lambda h: unsigned({"alg": "none", "kid": h.key.kid}, claims()),
                refusals.AlgorithmNotAllowed),
    _token_case("alg_none_capitalised", lambda h: unsigned({"alg": "None", "kid": h.key.kid}, claims()),
                refusals.AlgorithmNotAllowed),
    _token_case("hs256_signed_with_the_public_key", lambda h: hs256_with_public_key(h.key, claims()),
                refusals.AlgorithmNotAllowed),
    _token_case("es256_header_on_an_eddsa_kid", lambda h: signed(ATTACKER_EC, claims(), kid=h.key.kid),
                refusals.AlgorithmNotAllowed),
    _token_case("unknown_kid", lambda h: signed(ATTACKER, claims()), refusals.UnknownKey),
    _token_case("injected_kid_path", lambda h: signed(ATTACKER, claims(), kid="../../keys/" + h.key.kid),
                refusals.UnknownKey),
    _token_case("injected_kid_object", lambda h: unsigned({"alg": "EdDSA", "kid": {"$ne": ""}}, claims()),
                refusals.UnknownKey),
    _token_case("embedded_jwk_of_the_attacker",
                lambda h: signed(ATTACKER, claims(), jwk=dict(ATTACKER.public_jwk)), refusals.UnknownKey),
    _token_case("real_kid_attacker_signature", lambda h: signed(ATTACKER, claims(), kid=h.key.kid),
                refusals.BadSignature),
    _token_case("payload_swapped_under_a_real_signature",
                lambda h: swap_payload(h.token(), claims(grant={**claims()["grant"], "max_tokens": 100_000})),
                refusals.BadSignature),
    _token_case("expired", lambda h: h.token(now=time.time() - 120, ttl=30), refusals.TokenExpired),
    _token_case("not_yet_valid", lambda h: signed(h.key, claims(nbf=int(time.time()) + 60)),
                refusals.TokenNotYetValid),
    _token_case("issued_in_the_future", lambda h: h.token(now=time.time() + 120), refusals.TokenNotYetValid),
    _token_case("predates_the_gate", lambda h: h.token(now=time.time() - 100, ttl=300),
                refusals.IssuedBeforeGateStart),
    _token_case("wrong_audience", lambda h: h.token(audience="another-gate"), refusals.WrongAudience),
    _token_case("wrong_issuer", lambda h: signed(h.key, claims(iss="evil-broker")), refusals.WrongIssuer),
    _token_case("missing_jti", lambda h: signed(h.key, claims(jti=None)), refusals.MissingClaim),
    _token_case("lifetime_over_the_maximum", lambda h: signed(h.key, claims(exp=int(time.time()) + 3600)),
                refusals.MalformedToken),
    _token_case("grant_with_an_unknown_field",
                lambda h: signed(h.key, claims(grant={**claims()["grant"], "admin": True})),
                refusals.MalformedToken),
    # 86 signature characters cut to 73: a length no base64 has. (Cut to 74, the last character would
    # be canonical base64 one time in 16, and the check then fails as a bad signature instead.)
    _token_case("truncated_signature", lambda h: h.token()[:-13], refusals.MalformedToken),
    _token_case("truncated_to_two_segments", lambda h: h.token().rsplit(".", 1)[0], refusals.MalformedToken),
    _token_case("oversized", lambda h: h.token() + "A" * 9000, refusals.MalformedToken),
    _token_case("non_base64", lambda h: "@@@@.####.$$$$", refusals.MalformedToken),
    Case("replayed_past_its_uses", _replay, 401, refusals.TokenSpent.message, forwarded=1),
    Case("resent_after_a_refused_body", _resent_after_a_refusal, 401, refusals.TokenSpent.message),
    Case("resent_after_a_refused_route", _resent_after_a_wrong_route, 401, refusals.TokenSpent.message),
    Case("revoked", send(lambda h: request(h.token())), 401, refusals.TokenRevoked.message, prepare=_revoke),
    Case("in_the_query_string", send(_in_query), 401, refusals.MissingToken.message),
    Case("basic_scheme", send(lambda h: request(None, headers=b"Authorization: Basic " + h.token().encode()
                                                 + b"\r\n")), 401, refusals.MalformedToken.message),
    Case("two_authorization_headers",
         send(lambda h: request(h.token(), headers=b"Authorization: Bearer " + h.token().encode() + b"\r\n")),
         401, refusals.MalformedToken.message),
]

# -- HTTP framing --------------------------------------------------------------------------------


def _framed(headers: bytes, body: bytes = b"abcd") -> Any:
    """A chat request whose framing headers are exactly `headers`."""

    def build(h: Harness) -> bytes:
        return (
            b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer "
            + h.token().encode() + b"\r\nContent-Type: application/json\r\n" + headers + b"\r\n" + body
        )

    return send(build)


def _line(line: bytes) -> Any:
    return send(lambda h: line + b"Host: gate\r\nAuthorization: Bearer " + h.token().encode()
                + b"\r\nContent-Length: 0\r\n\r\n")


async def _pipelined(h: Harness) -> Response:
    token = h.token()
    client = await Client.open(h.port)  # type: ignore[arg-type]
    try:
        await client.send(request(token) + request(token))
        first = await client.response()
        assert first.status == 200
        return await client.response()
    finally:
        client.close()


async def _trickle(h: Harness, start: bytes, drip: bytes) -> Response:
    """Send `start`, then one byte of `drip` every 50 ms: the timeout must fire all the same.

    No wall-clock bound: the client waits 5 s, many times the 0.3 s timeout under test, and a drip
    that is not empty lasts at least 10 s, so an answer at all proves the timeout fired mid-drip.
    """
    client = await Client.open(h.port)  # type: ignore[arg-type]

    async def drip_feed() -> None:
        with contextlib.suppress(ConnectionError):
            await client.send(start)
            for byte in drip:
                await asyncio.sleep(0.05)
                await client.send(bytes([byte]))

    feeder = asyncio.ensure_future(drip_feed())
    try:
        return await client.response(timeout=5)
    finally:
        feeder.cancel()
        client.close()


async def _slowloris_head(h: Harness) -> Response:
    return await _trickle(h, b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: gate\r\n", b"X-Slow: " + b"a" * 200)


async def _stalled_body(h: Harness) -> Response:
    """A body that stops halfway. (A body that drips on is bounded only per read: see body_timeout.)"""
    head = request(h.token(), body=b"").replace(b"Content-Length: 0", b"Content-Length: 400")
    return await _trickle(h, head + b'{"messages":', b"")


async def _dripped_body(h: Harness) -> Response:
    """A body sent a byte every 50 ms: each read used to re-arm the timeout, so it never ended."""
    head = request(h.token(), body=b"").replace(b"Content-Length: 0", b"Content-Length: 400")
    return await _trickle(h, head + b'{"messages":', b" " * 300)


def _small_route(method: bytes, target: bytes) -> Any:
    """A broker route with a small body, declared 100 KB: 413 at once, with not one body byte sent.

    A gate that waited for the body would answer nothing before its 60 s body timeout (and then 408),
    so a 413 within the client's 30 s proves the refusal came from the head alone: no clock needed.
    """

    async def act(h: Harness) -> Response:
        raw = method + b" " + target + b" HTTP/1.1\r\nHost: gate\r\nContent-Length: 100000\r\n\r\n"
        return await exchange(h, raw, timeout=30)

    return act


HEAD_UNFINISHED = b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: gate\r\n"
"""A request head still arriving: no blank line ends it."""


def _beyond_held(held_count: int, started: bytes = b"") -> Any:
    """With `held_count` connections open from 127.0.0.1 (each having sent `started`: a head still
    arriving), one more request is turned away with Retry-After."""

    async def act(h: Harness) -> Response:
        held = [await Client.open(h.port) for _ in range(held_count)]  # type: ignore[arg-type]
        try:
            for client in held:
                if started:
                    await client.send(started)
            await asyncio.sleep(0.05)
            response = await exchange(h, request(h.token()))
            assert response.header(b"retry-after") == [b"2"]
            return response
        finally:
            for client in held:
                client.close()

    return act


async def _fifty_megabytes_announced(h: Harness) -> Response:
    head = request(h.token(), body=b"").replace(b"Content-Length: 0", b"Content-Length: 52428800")
    return await exchange(h, head)


async def _fifty_megabytes_chunked(h: Harness) -> Response:
    """50 MB really sent, chunked (so no length announces it); the gate cuts it at its 20 MB limit."""
    head = request(h.token(), body=b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    client = await Client.open(h.port)  # type: ignore[arg-type]
    piece = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"

    async def pour() -> None:
        with contextlib.suppress(ConnectionError):
            await client.send(head)
            for _ in range(50):
                await client.send(piece)

    pouring = asyncio.ensure_future(pour())
    try:
        return await client.response(timeout=20)
    finally:
        pouring.cancel()
        client.close()


HTTP = [
    Case("content_length_and_transfer_encoding", _framed(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"),
         400, "Content-Length and Transfer-Encoding must not both be sent.", closes=True),
    Case("duplicate_content_length", _framed(b"Content-Length: 4\r\nContent-Length: 4\r\n"),
         400, "Content-Length must appear once.", closes=True),
    Case("negative_content_length", _framed(b"Content-Length: -4\r\n"),
         400, "Content-Length must be a non-negative integer.", closes=True),
    Case("plus_signed_content_length", _framed(b"Content-Length: +4\r\n"),
         400, "Content-Length must be a non-negative integer.", closes=True),
    Case("content_length_past_64_bits", _framed(b"Content-Length: 99999999999999999999999\r\n"),
         400, "Content-Length must be a non-negative integer.", closes=True),
    Case("huge_content_length", _framed(b"Content-Length: 999999999999\r\n"),
         413, "The request body is too large.", closes=True),
    Case("transfer_encoding_gzip_chunked", _framed(b"Transfer-Encoding: gzip, chunked\r\n"),
         400, "Transfer-Encoding may only be chunked, once.", closes=True),
    Case("bad_chunk_size", _framed(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
         400, "The request body's framing is not valid.", closes=True),
    Case("chunk_size_overflow", _framed(b"Transfer-Encoding: chunked\r\n", b"1" + b"0" * 40 + b"\r\nab\r\n"),
         400, "The request body's framing is not valid.", closes=True),
    Case("obs_fold", _framed(b"Content-Length: 4\r\nX-Folded: a\r\n  b\r\n"),
         400, "Folded header lines are not accepted.", closes=True),
    Case("oversized_head", _framed(b"Content-Length: 4\r\nX-Big: " + b"a" * 17_000 + b"\r\n"),
         431, "The request head is larger than 16 KB.", closes=True),
    Case("nul_in_a_header", _framed(b"Content-Length: 4\r\nX-A: a\x00b\r\n"),
         400, "The request head holds a NUL byte.", closes=True),
    Case("bare_cr_in_a_header", _framed(b"Content-Length: 4\r\nX-A: a\rb\r\n"),
         400, "Lines of the request head must end with CRLF.", closes=True),
    Case("space_before_the_colon", _framed(b"Content-Length : 4\r\n"),
         400, "A header line is malformed.", closes=True),
    Case("slowloris_head", _slowloris_head, 408, "The request did not arrive in time.",
         settings={"head_timeout": 0.3}, closes=True),
    Case("stalled_body", _stalled_body, 408, "The request did not arrive in time.",
         settings={"body_timeout": 0.3}, closes=True),
    Case("dripped_body", _dripped_body, 408, "The request did not arrive in time.",
         settings={"body_timeout": 0.3}, closes=True),
    Case("over_the_connection_cap", _beyond_held(3), 503,
         "The server holds too many connections; try again in a moment.",
         settings={"max_connections": 3}, closes=True),
    Case("over_the_pending_cap_per_address", _beyond_held(2, HEAD_UNFINISHED), 503,
         "Too many requests from your address are still arriving; try again in a moment.",
         settings={"max_pending_per_address": 2}, closes=True),
    *[Case(f"large_body_declared_to_{name}", _small_route(method, target), 413, "The request body is too large.",
           closes=True)
      for name, method, target in [
          ("direct_stream", b"POST", b"/direct-stream"),
          ("logout", b"POST", b"/logout"),
          ("revoke", b"POST", b"/direct-stream/revoke"),
          ("a_tool", b"POST", b"/tools/echo"),
          ("the_login", b"GET", b"/?token=abc"),
      ]],
    Case("pipelined_second_request_with_the_spent_token", _pipelined, 401, refusals.TokenSpent.message,
         forwarded=1),
    Case("http10_without_a_token", send(lambda h: request(None, method=b"GET", target=b"/direct/v1/stream",
                                                          version=b"HTTP/1.0")),
         401, refusals.MissingToken.message, closes=True),
    Case("http09_request_line", send(lambda h: b"GET /direct/v1/stream\r\n\r\n"),
         400, "The request is not valid HTTP/1.1.", closes=True),
    Case("http2_version", _line(b"POST /direct/v1/chat/completions HTTP/2.0\r\n"),
         505, "Only HTTP/1.1 and HTTP/1.0 are supported.", closes=True),
    Case("absolute_form_uri", _line(b"POST http://llama-server/direct/v1/chat/completions HTTP/1.1\r\n"),
         400, "The request target must be a path.", closes=True),
    Case("asterisk_form_uri", _line(b"OPTIONS * HTTP/1.1\r\n"), 400, "The request target must be a path.",
         closes=True),
    Case("connect", _line(b"CONNECT llama-server:8080 HTTP/1.1\r\n"), 405, "CONNECT is not served.", closes=True),
    Case("fifty_megabytes_announced", _fifty_megabytes_announced, 413, "The request body is too large.",
         closes=True),
    Case("fifty_megabytes_chunked", _fifty_megabytes_chunked, 413, "The request body is too large.", closes=True),
    Case("expect_continue_with_no_token", send(lambda h: request(None, headers=b"Expect: 100-continue\r\n")),
         401, refusals.MissingToken.message),
]
