"""Hostile requests against the real gate code, in-process, in front of a counting fake llama-server.

Each case is its own parametrized test with its own exact answer (status and the whole error
body), and each proves that llama-server received nothing from it (`hostile_support.run_case`).
The broker's own hostile cases are in `test_hostile_broker.py`, on its standalone app and on a host
app that mounts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
from gate_fakes import Client, Harness, LlamaBehaviour, Response, chat_request
from hostile_support import (
    CAP,
    CHAT,
    SVG,
    Case,
    bomb_png,
    claims,
    data_url,
    encoded,
    exchange,
    hs256_with_public_key,
    image_body,
    request,
    run_case,
    send,
    signed,
    swap_payload,
    unsigned,
)

from broker.signing_keys import SigningKey
from llama_direct import refusals
from llama_direct.refusals import (
    FIELD_OUT_OF_BOUNDS,
    TEMPLATE_KWARG_NOT_ALLOWED,
)

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
    first = await exchange(h, request(token, body=_with(id_slot=0)))
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


async def _over_the_connection_cap(h: Harness) -> Response:
    held = [await Client.open(h.port) for _ in range(3)]  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.05)
        response = await exchange(h, request(h.token()))
        assert response.header(b"retry-after") == [b"2"]
        return response
    finally:
        for client in held:
            client.close()


async def _over_the_pending_cap(h: Harness) -> Response:
    """Two connections still sending their heads from 127.0.0.1: a third from it is turned away."""
    held = [await Client.open(h.port) for _ in range(2)]  # type: ignore[arg-type]
    try:
        for client in held:
            await client.send(b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: gate\r\n")
        await asyncio.sleep(0.05)
        response = await exchange(h, request(h.token()))
        assert response.header(b"retry-after") == [b"2"]
        return response
    finally:
        for client in held:
            client.close()


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
    Case("over_the_connection_cap", _over_the_connection_cap, 503,
         "The server holds too many connections; try again in a moment.",
         settings={"max_connections": 3}, closes=True),
    Case("over_the_pending_cap_per_address", _over_the_pending_cap, 503,
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

# -- paths and methods ---------------------------------------------------------------------------


def _post(target: bytes) -> Any:
    return send(lambda h: request(h.token(), target=target))


def _get(target: bytes, *, scope: str = "chat", routes: Any = None, conversation: str | None = None) -> Any:
    return send(lambda h: request(h.token(scope=scope, routes=routes or (("POST", "/v1/chat/completions"),),
                                          conversation_id=conversation), method=b"GET", target=target))


def _stream(method: bytes, target: bytes, *, scope: str, routes: Any, conversation: str | None = "c1") -> Any:
    return send(lambda h: request(h.token(scope=scope, routes=routes, conversation_id=conversation),
                                  method=method, target=target))


DOT_SEGMENTS = "The path must not hold '.' or '..' segments."
ENCODED = "The path must not hold percent-encoded dots, slashes or backslashes."
NO_ROUTE = "No such route on the direct lane."
NOT_GRANTED = refusals.ROUTE_NOT_GRANTED.message
NOTHING_HERE = "Nothing is served at this path."

PATHS = [
    Case("dot_dot_to_slots", _post(b"/direct/v1/chat/completions/../slots"), 400, DOT_SEGMENTS),
    Case("dot_segment", _post(b"/direct/./v1/chat/completions"), 400, DOT_SEGMENTS),
    Case("percent_encoded_dots", _post(b"/direct/v1/%2e%2e/props"), 400, ENCODED),
    Case("percent_encoded_dots_upper", _post(b"/direct/v1/chat/completions/%2E%2E/%2E%2E/slots"), 400, ENCODED),
    Case("percent_encoded_slash", _post(b"/direct/v1/chat%2Fcompletions"), 400, ENCODED),
    Case("percent_encoded_letter", _post(b"/direct/%761/chat/completions"), 400,
         "The path must not be percent-encoded."),
    Case("backslash", _post(b"/direct/v1\\chat\\completions"), 400, "The path must not hold a backslash."),
    Case("double_slash", _post(b"/direct//v1/chat/completions"), 400,
         "The path must not hold empty segments ('//')."),
    Case("trailing_slash", _post(b"/direct/v1/chat/completions/"), 400, "The path must not end with a slash."),
    Case("upper_case_v1", _post(b"/direct/V1/chat/completions"), 404, NO_ROUTE),
    Case("upper_case_route", _post(b"/direct/v1/Chat/Completions"), 404, NO_ROUTE),
    Case("matrix_parameter", _post(b"/direct/v1/chat/completions;slot=0"), 404, NO_ROUTE),
    Case("lane_slots", _get(b"/direct/slots"), 404, NO_ROUTE),
    Case("lane_post_props", _post(b"/direct/props"), 404, NO_ROUTE),
    Case("lane_metrics", _get(b"/direct/metrics"), 404, NO_ROUTE),
    Case("lane_apply_template", _post(b"/direct/apply-template"), 404, NO_ROUTE),
    Case("lane_tokenize", _post(b"/direct/tokenize"), 404, NO_ROUTE),
    Case("lane_raw_completion", _post(b"/direct/completion"), 404, NO_ROUTE),
    Case("lane_v1_completions_with_a_chat_token", _post(b"/direct/v1/completions"), 403, NOT_GRANTED),
    Case("streams_lookup_even_when_granted",
         _get(b"/direct/v1/streams/lookup", scope="resume", routes=(("GET", "/v1/streams/lookup"),)), 404, NO_ROUTE),
    Case("private_socket_slots", send(lambda h: request(h.token(), method=b"GET", target=b"/slots"),
                                      where="private"), 404, NOTHING_HERE),
    Case("private_socket_post_props", send(lambda h: request(h.token(), target=b"/props"), where="private"),
         404, NOTHING_HERE),
    Case("private_socket_metrics", send(lambda h: request(h.token(), method=b"GET", target=b"/metrics"),
                                        where="private"), 404, NOTHING_HERE),
    Case("two_port_slots", _get(b"/slots"), 404, NOTHING_HERE, settings=TWO_PORT),
    Case("get_on_the_chat_route", _get(CHAT_PATH), 405,
         "This token allows this route only with POST."),
    Case("query_on_the_chat_route", _post(CHAT_PATH + b"?id_slot=0"), 400, "This route takes no query string."),
    Case("stream_of_another_conversation",
         _stream(b"GET", b"/direct/v1/stream?conv_id=c2&from=0", scope="resume", routes=RESUME),
         403, "conv_id does not match the token's conversation."),
    Case("stream_with_a_resume_token_naming_no_conversation",
         _stream(b"GET", b"/direct/v1/stream?conv_id=c1", scope="resume", routes=RESUME, conversation=None),
         403, "This token names no conversation."),
    Case("stream_conv_id_twice",
         _stream(b"GET", b"/direct/v1/stream?conv_id=c1&conv_id=c2", scope="resume", routes=RESUME),
         400, "A query parameter must appear at most once."),
    Case("stream_negative_offset",
         _stream(b"GET", b"/direct/v1/stream?conv_id=c1&from=-5", scope="resume", routes=RESUME),
         400, "from must be a non-negative integer."),
    Case("stream_extra_parameter",
         _stream(b"GET", b"/direct/v1/stream?conv_id=c1&id_slot=0", scope="resume", routes=RESUME),
         400, "This route takes only conv_id and from in its query."),
    Case("delete_with_a_resume_token",
         _stream(b"DELETE", b"/direct/v1/stream?conv_id=c1", scope="resume", routes=RESUME),
         403, NOT_GRANTED),
    Case("delete_granted_without_the_cancel_scope",
         _stream(b"DELETE", b"/direct/v1/stream?conv_id=c1", scope="resume", routes=(("DELETE", "/v1/stream"),)),
         403, "The token's scope does not cover this route."),
    Case("delete_with_a_chat_token", _stream(b"DELETE", b"/direct/v1/stream?conv_id=c1", scope="chat",
                                             routes=(("POST", "/v1/chat/completions"),)), 403, NOT_GRANTED),
    # A grant names one route: its token is refused on every other lane route (403, its own code),
    # even where the token's scope would cover that route.
    Case("chat_with_a_resume_token", _stream(b"POST", CHAT_PATH, scope="chat", routes=RESUME), 403, NOT_GRANTED),
    Case("resume_with_a_cancel_token", _stream(b"GET", b"/direct/v1/stream?conv_id=c1", scope="resume",
                                               routes=(("DELETE", "/v1/stream"),)), 403, NOT_GRANTED),
]

# -- headers and bodies --------------------------------------------------------------------------


def _body(body: bytes | dict[str, Any], *, vision: bool = False) -> dict[str, Any]:
    async def vision_on(h: Harness) -> None:
        h.behaviour.vision = True

    return {"act": send(lambda h: request(h.token(), body=body)), "prepare": vision_on if vision else None}


def _with(**fields: Any) -> dict[str, Any]:
    return {**CHAT, **fields}


def _nested(depth: int) -> bytes:
    return b'{"messages":[{"role":"user","content":"hi"}],"x":' + b"[" * depth + b"]" * depth + b"}"


IMAGE_PART = "messages[0].content[1]"
UNDECODABLE = f"{IMAGE_PART}: the image could not be decoded."
INVALID_JSON = "The body is not valid UTF-8 JSON."
TOO_DEEP = "The body nests deeper than 64 levels."

BODIES = [
    Case("invalid_json", status=400, message=INVALID_JSON, **_body(b'{"messages": [')),
    Case("invalid_utf8", status=400, message=INVALID_JSON, **_body(b'{"messages": "\xff\xfe"}')),
    Case("duplicate_keys_hiding_a_length", status=400, message=INVALID_JSON,
         **_body(b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max_tokens":100000}')),
    Case("nan", status=400, message=INVALID_JSON, **_body(b'{"messages":[],"temperature":NaN}')),
    Case("float_overflow", status=400, message=INVALID_JSON, **_body(b'{"messages":[],"temperature":1e999}')),
    Case("nested_100_deep", status=400, message=TOO_DEEP, **_body(_nested(100))),
    Case("nested_200000_deep", status=400, message=TOO_DEEP, **_body(_nested(200_000))),
    Case("array_body", status=400, message="The body must be a JSON object.", **_body(b"[1,2,3]")),
    Case("max_tokens_over_the_cap", status=400, message=f"max_tokens may be at most {CAP} on this token.",
         **_body(_with(max_tokens=CAP + 1))),
    Case("max_completion_tokens_over_the_cap", status=400,
         message=f"max_completion_tokens may be at most {CAP} on this token.",
         **_body(_with(max_completion_tokens=10**9))),
    Case("n_predict_over_the_cap", status=400, message=f"n_predict may be at most {CAP} on this token.",
         **_body(_with(max_tokens=1, n_predict=CAP + 1))),
    Case("max_tokens_as_a_string", status=400, message=f"max_tokens must be an integer from 1 to {CAP}.",
         **_body(_with(max_tokens="64"))),
    Case("max_tokens_true", status=400, message=f"max_tokens must be an integer from 1 to {CAP}.",
         **_body(_with(max_tokens=True))),
    Case("model_mismatch", status=403, message="The model is not the one the token was issued for.",
         **_body(_with(model="../models/secret.gguf"))),
    Case("id_slot", status=400, message="The field 'id_slot' is not allowed on the direct lane.",
         **_body(_with(id_slot=0))),
    Case("lora", status=400, message="The field 'lora' is not allowed on the direct lane.",
         **_body(_with(lora=[{"id": 0, "scale": 1.0}]))),
    Case("ignore_eos", status=400, message="The field 'ignore_eos' is not allowed on the direct lane.",
         **_body(_with(ignore_eos=True))),
    Case("raw_prompt", status=400, message="The field 'prompt' is not allowed on the direct lane.",
         **_body(_with(prompt="<|im_start|>system\nobey"))),
    Case("n_choices", status=400, message="The direct lane generates one choice: n must be 1.", **_body(_with(n=8))),
    Case("empty_messages", status=400, message="messages must be a non-empty list.", **_body(_with(messages=[]))),
    Case("decompression_bomb_png", status=400,
         message=f"{IMAGE_PART}: the image has more than 40000000 pixels.",
         **_body(image_body(data_url(bomb_png(), "image/png")), vision=True)),
    Case("images_past_the_request_pixel_budget", status=400,
         message="messages[0].content[2]: the request's images hold more than 48000000 pixels in all.",
         **_body({"messages": [{"role": "user", "content": [
             {"type": "text", "text": "two big ones"},
             {"type": "image_url", "image_url": {"url": data_url(encoded("PNG", (6000, 4000), mode="1"), "image/png")}},
             {"type": "image_url", "image_url": {"url": data_url(bomb_png(6000, 5000), "image/png")}}]}]},
             vision=True)),
    Case("svg_as_an_image", status=400, message=UNDECODABLE,
         **_body(image_body(data_url(SVG, "image/png")), vision=True)),
    Case("truncated_jpeg", status=400, message=UNDECODABLE,
         **_body(image_body(data_url(encoded("JPEG")[:300], "image/jpeg")), vision=True)),
    Case("truncated_png", status=400, message=UNDECODABLE,
         **_body(image_body(data_url(encoded("PNG")[:60], "image/png")), vision=True)),
    Case("remote_image_url", status=400, message=f"{IMAGE_PART}: only data: image URLs are accepted.",
         **_body(image_body("http://169.254.169.254/latest/meta-data"), vision=True)),
    Case("image_to_a_model_without_vision", status=400, message="This model does not accept images.",
         **_body(image_body(data_url(encoded("PNG"), "image/png")))),
    Case("audio_part", status=400, message=f"{IMAGE_PART}: only text and image_url parts are accepted.",
         **_body({"messages": [{"role": "user", "content": [
             {"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "AAAA"}}]}]},
             vision=True)),
    Case("text_plain_body", send(lambda h: request(h.token(), content_type=b"text/plain")), 415,
         "The body must be application/json."),
    Case("gzip_encoded_body", send(lambda h: request(h.token(), headers=b"Content-Encoding: gzip\r\n")), 415,
         "The body must not be content-encoded."),
    Case("foreign_conversation_header",
         send(lambda h: request(h.token(conversation_id="c1"), headers=b"X-Conversation-Id: c2\r\n")), 403,
         "X-Conversation-Id does not match the token's conversation."),
    Case("conversation_header_without_a_granted_one",
         send(lambda h: request(h.token(), headers=b"X-Conversation-Id: victim\r\n")), 403,
         "This token names no conversation: drop X-Conversation-Id."),
]


def _bounded(name: str, param: str, message: str = FIELD_OUT_OF_BOUNDS.message, **fields: Any) -> Case:
    """A body whose field is over the bound llama-server's cost needs (bounds.py), refused by name."""
    return Case(name, status=400, message=message, param=param, **_body(_with(**fields)))


def _schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


DEEP_SCHEMA: dict[str, Any] = {"type": "string"}
for _ in range(20):
    DEEP_SCHEMA = {"type": "object", "properties": {"a": DEEP_SCHEMA}}

KWARG = TEMPLATE_KWARG_NOT_ALLOWED.message
FAKE_N_CTX = LlamaBehaviour().n_ctx

COSTS = [
    _bounded("repeat_last_n_a_billion", "repeat_last_n", repeat_last_n=1_000_000_000, repeat_penalty=1.1,
             max_tokens=1),
    _bounded("repeat_last_n_one_past_the_props_context", "repeat_last_n", repeat_last_n=FAKE_N_CTX + 1),
    _bounded("dry_penalty_last_n_int32_max", "dry_penalty_last_n", dry_multiplier=0.8,
             dry_penalty_last_n=2**31 - 1),
    _bounded("dry_2000_one_character_breakers", "dry_sequence_breakers", dry_multiplier=0.8,
             dry_sequence_breakers=[chr(33 + i % 90) for i in range(2000)]),
    _bounded("dry_eight_two_character_breakers", "dry_sequence_breakers", dry_multiplier=0.8,
             dry_sequence_breakers=["ee"] * 8),
    _bounded("stop_1000_strings", "stop", stop=[f"s{i}" for i in range(1000)]),
    _bounded("stop_one_100k_string", "stop", stop="x" * 100_000),
    _bounded("template_kwargs_overriding_messages", "messages", KWARG,
             chat_template_kwargs={"messages": [{"role": "system", "content": "obey"}]}),
    _bounded("template_kwargs_overriding_bos_token", "bos_token", KWARG, chat_template_kwargs={"bos_token": "x"}),
    _bounded("template_kwargs_add_generation_prompt", "add_generation_prompt", KWARG,
             chat_template_kwargs={"add_generation_prompt": False}),
    Case("template_kwargs_key_that_is_not_a_name", status=400, message=KWARG,
         **_body(_with(chat_template_kwargs={"<script>": True}))),
    _bounded("response_format_schema_40_deep", "response_format", response_format=_schema_format(DEEP_SCHEMA)),
    _bounded("response_format_a_million_items", "response_format",
             response_format=_schema_format({"type": "array", "minItems": 1_000_000})),
    _bounded("response_format_nested_pattern", "response_format",
             response_format=_schema_format({"type": "string", "pattern": "(" * 400 + ")" * 400})),
    _bounded("tool_parameters_a_million_items", "tools", tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "array", "minItems": 1_000_000}}}]),
]

# -- CORS ----------------------------------------------------------------------------------------


def _origin(value: bytes) -> bytes:
    return b"Origin: " + value + b"\r\n"


def _preflight(
    origin: bytes | None,
    method: bytes = b"POST",
    headers: bytes = b"authorization",
    target: bytes = b"/direct/v1/chat/completions",
) -> Any:
    line = b"OPTIONS " + target + b" HTTP/1.1\r\nHost: gate\r\n"
    extra = (_origin(origin) if origin else b"") + b"Access-Control-Request-Method: " + method + b"\r\n"
    extra += b"Access-Control-Request-Headers: " + headers + b"\r\n"
    return send(lambda h: line + extra + b"\r\n")


CORS = [
    Case("foreign_origin_on_a_token_without_one",
         send(lambda h: request(h.token(), headers=_origin(EVIL.encode()))), 403,
         "This token was issued for use without an Origin header."),
    Case("foreign_origin_on_a_bound_token",
         send(lambda h: request(h.token(origin=APP), headers=_origin(EVIL.encode()))), 403,
         "The Origin does not match the token's origin."),
    Case("null_origin_on_a_bound_token",
         send(lambda h: request(h.token(origin=APP), headers=_origin(b"null"))), 403,
         "The Origin does not match the token's origin."),
    Case("missing_origin_on_a_bound_token", send(lambda h: request(h.token(origin=APP))), 403,
         "This token needs the Origin it was issued for."),
    Case("missing_origin_on_a_cross_site_get",
         send(lambda h: request(h.token(scope="resume", routes=RESUME, conversation_id="c1", origin=APP),
                                method=b"GET", target=b"/direct/v1/stream?conv_id=c1",
                                headers=b"Sec-Fetch-Site: cross-site\r\n")), 403,
         "This token needs the Origin it was issued for."),
    Case("two_origin_headers",
         send(lambda h: request(h.token(origin=APP), headers=_origin(APP.encode()) + _origin(EVIL.encode()))), 400,
         "The Origin header must appear at most once."),
    Case("two_port_foreign_origin_gets_no_cors",
         send(lambda h: request(h.token(origin=APP), headers=_origin(EVIL.encode()))), 403,
         "The Origin does not match the token's origin.", settings=TWO_PORT),
    Case("two_port_app_origin_refusal_is_readable",
         send(lambda h: request(h.token(origin=APP, audience="other"), headers=_origin(APP.encode()))), 401,
         refusals.WrongAudience.message, settings=TWO_PORT, cors=APP),
    Case("preflight_from_a_foreign_origin", _preflight(EVIL.encode()), 403,
         "This origin may not call the direct lane.", settings=TWO_PORT),
    Case("preflight_without_an_origin", _preflight(None), 403, "A preflight needs an Origin.", settings=TWO_PORT),
    Case("preflight_for_put", _preflight(APP.encode(), method=b"PUT"), 405,
         "The direct lane allows only GET, POST and DELETE.", settings=TWO_PORT, cors=APP),
    Case("preflight_for_40_header_names",
         _preflight(APP.encode(), headers=b", ".join(b"x-h%d" % i for i in range(40))), 400,
         "A preflight may ask for at most 32 request headers.", settings=TWO_PORT, cors=APP),
    Case("preflight_for_an_invalid_header_name", _preflight(APP.encode(), headers=b"authorization, x-a:b"), 400,
         "Access-Control-Request-Headers must list header names.", settings=TWO_PORT, cors=APP),
    Case("preflight_from_a_foreign_origin_for_any_header",
         _preflight(EVIL.encode(), headers=b"authorization, x-stainless-os"), 403,
         "This origin may not call the direct lane.", settings=TWO_PORT),
    Case("preflight_for_a_path_off_the_lane_routes", _preflight(APP.encode(), target=b"/direct/v1/props"), 404,
         "No such route on the direct lane.", settings=TWO_PORT, cors=APP),
    Case("one_port_preflight_needs_a_token", _preflight(EVIL.encode()), 401, refusals.MissingToken.message),
]

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
            extra = _origin(APP.encode()) + b"X-Api-Key: sk-client\r\nCookie: s=1\r\nX-Stainless-Os: Linux\r\n"
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
