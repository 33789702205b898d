"""Building blocks for the hostile cases: forged tokens, crafted images, raw requests, one runner.

Every case runs a whole in-process gate (`gate_fakes.running_gate`) whose fake llama-server
records each request it receives. The runner counts those before and after the hostile request,
so a case proves that what it sent never reached llama-server, whatever the gate answered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from gate_fakes import AUDIENCE, ISSUER, MASTER_KEY, MODEL, Client, Harness, Response, running_gate
from PIL import Image
from refusal_bodies import error_body

from broker.signing_keys import SigningKey

CHAT_PATH = b"/direct/v1/chat/completions"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
CAP = 64
"""The grant cap `gate_fakes.Harness.token` mints with."""

Act = Callable[[Harness], Awaitable[Response]]
Prepare = Callable[[Harness], Awaitable[None]]


# -- tokens --------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(**overrides: Any) -> dict[str, Any]:
    """A payload the harness's gate would accept, but for `overrides` (a None value drops the claim)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 30,
        "jti": "jti-" + str(time.monotonic_ns()),
        "scope": "chat",
        "grant": {"routes": [["POST", "/v1/chat/completions"]], "model": MODEL, "max_tokens": CAP, "uses": 1},
    }
    payload.update(overrides)
    return {name: value for name, value in payload.items() if value is not None}


def signed(key: SigningKey, payload: dict[str, Any], **header: Any) -> str:
    """A token really signed by `key`, with `kid` = the key's unless the header says otherwise."""
    return jwt.encode(payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, **header})


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token with any header at all; the signature is whatever bytes the attacker chose."""
    segments = [b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode())]
    return ".".join([*segments, b64url(signature)])


def hs256_with_public_key(key: SigningKey, payload: dict[str, Any]) -> str:
    """The classic confusion: HMAC-SHA256 keyed with the verifier's own public key (PEM and raw alike)."""
    pem = key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def swap_payload(token: str, payload: dict[str, Any]) -> str:
    """The same header and signature around another payload: a tampered grant."""
    header, _, signature = token.split(".")
    return f"{header}.{b64url(json.dumps(payload).encode())}.{signature}"


# -- images --------------------------------------------------------------------------------------


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def encoded(fmt: str, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 0 if mode == "1" else (200, 10, 30)).save(out, format=fmt)
    return out.getvalue()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A small PNG that declares 400 million 8-bit pixels (400 MB decoded), ten times the gate's cap.

    Only the first rows are really compressed in it: the guard must refuse on the declared size,
    before a single row is inflated, so the rest would never be read anyway.
    """

    def png_chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<image href="file:///etc/passwd"/></svg>'
)


def image_body(url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"messages": [{"role": "user", "content": content}]}


# -- raw requests --------------------------------------------------------------------------------


def request(
    token: str | None,
    *,
    method: bytes = b"POST",
    target: bytes = CHAT_PATH,
    body: bytes | dict[str, Any] | None = None,
    headers: bytes = b"",
    version: bytes = b"HTTP/1.1",
    content_type: bytes | None = b"application/json",
) -> bytes:
    """One request exactly as written; a dict body is JSON, a POST without one gets the plain chat body."""
    if body is None:
        body = CHAT if method == b"POST" else b""
    raw_body = json.dumps(body).encode() if isinstance(body, dict) else body
    head = method + b" " + target + b" " + version + b"\r\nHost: gate\r\n"
    if token is not None:
        head += b"Authorization: Bearer " + token.encode() + b"\r\n"
    if content_type is not None and method == b"POST":
        head += b"Content-Type: " + content_type + b"\r\n"
    if raw_body or method == b"POST":
        head += b"Content-Length: %d\r\n" % len(raw_body)
    return head + headers + b"\r\n" + raw_body


async def exchange(h: Harness, raw: bytes, *, where: str = "public", timeout: float = 10.0) -> Response:
    """Send `raw`, read one response. A reset after the answer was written still yields the answer."""
    client = await Client.open(h.port if where == "public" else h.config.private_socket)  # type: ignore[arg-type]
    try:
        with contextlib.suppress(ConnectionError):
            await client.send(raw)
        return await client.response(timeout=timeout)
    finally:
        client.close()


def send(build: Callable[[Harness], bytes], *, where: str = "public") -> Act:
    async def act(h: Harness) -> Response:
        return await exchange(h, build(h), where=where)

    return act


# -- the case table and its runner ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile request: what is sent, and the exact refusal it must get."""

    name: str
    act: Act
    status: int
    message: str
    settings: dict[str, Any] = field(default_factory=dict)
    prepare: Prepare | None = None
    forwarded: int = 0
    """Upstream requests the act itself makes legitimately (a pipelined first request)."""
    cors: str | None = None
    """The Access-Control-Allow-Origin the refusal must carry (two-port mode), None: no CORS header."""
    closes: bool = False
    param: str | None = None
    """The field the refusal names in `error.param`, None: no `param`."""


def run_case(case: Case) -> None:
    async def main() -> None:
        async with running_gate(**case.settings) as h:
            if case.prepare is not None:
                await case.prepare(h)
            before_llama = len(h.upstream_requests)
            before_broker = len(h.broker.requests)
            response = await case.act(h)
            await asyncio.sleep(0.05)  # anything the gate wrongly forwarded has landed by now
            expected = error_body(case.status, case.message, case.param)
            assert (response.status, response.json()) == (case.status, expected)
            assert len(h.upstream_requests) == before_llama + case.forwarded, "llama-server received it"
            assert len(h.broker.requests) == before_broker, "the broker received a lane request"
            assert b"eyJ" not in response.body and MASTER_KEY.encode() not in response.body
            assert response.header(b"access-control-allow-origin") == ([case.cors.encode()] if case.cors else [])
            if case.closes:
                assert response.header(b"connection") == [b"close"]

    asyncio.run(asyncio.wait_for(main(), 60))
