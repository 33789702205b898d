"""The gate's one door to llama-server (and to the broker's sockets): connect, or a typed refusal.

Every connection the gate opens goes through `connect`, which maps each socket, TLS and timeout
error to the gate's own `UpstreamUnavailable` (502) or `UpstreamTimeout` (504), in the style of
httpx's `map_httpcore_exceptions`: the shell has one refusal handler, and no exception text (which
may name a socket path) ever reaches a client.

A connection is fresh per request: llama-server closes a kept-alive connection after a long stream
without saying so, and the next request sent on it vanishes (`../shared/LLAMA-SERVER.md`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import httptools

from llama_direct.llama_server import NotListening
from llama_direct.refusals import Refusal, UpstreamTimeout, UpstreamUnavailable

P = TypeVar("P", bound=asyncio.BaseProtocol)

MAX_JSON_RESPONSE_BYTES = 1024 * 1024


class Upstream(Protocol):
    """What the gate needs of a llama-server; the launcher's `LlamaServer` satisfies it.

    `address` and `authorization()` are read per request, so a respawned llama-server (new socket,
    new key) is used from the next request on; both raise `NotListening` while there is none (the
    gate answers 502). `authorization()` returns the whole header value,
    `b"Bearer <key>"`; nothing may log it.
    """

    @property
    def address(self) -> str | tuple[str, int]: ...

    @property
    def ssl(self) -> ssl.SSLContext | None: ...

    @property
    def host_header(self) -> bytes: ...

    def authorization(self) -> bytes: ...

    def is_ready(self) -> bool: ...


async def connect(
    address: str | tuple[str, int],
    factory: Callable[[], P],
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[asyncio.Transport, P]:
    """Open one connection (a unix socket path, or host and port) or raise a gate refusal."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if isinstance(address, str):
                transport, protocol = await loop.create_unix_connection(factory, address)
            else:
                host, port = address
                transport, protocol = await loop.create_connection(factory, host, port, ssl=ssl_context)
    except TimeoutError:
        raise UpstreamTimeout() from None
    except (OSError, ssl.SSLError, ValueError):
        raise UpstreamUnavailable() from None
    return transport, protocol


async def connect_upstream(
    upstream: Upstream, factory: Callable[[], P], *, timeout: float
) -> tuple[asyncio.Transport, P]:
    """`connect` to wherever llama-server listens now; one not yet listening is unavailable."""
    try:
        address = upstream.address
    except NotListening:
        raise UpstreamUnavailable() from None
    return await connect(address, factory, timeout=timeout, ssl_context=upstream.ssl)


class _Collector(asyncio.Protocol):
    """Reads one whole small response: llama-server's /health, /slots and /props, its stops and unloads,
    and the broker's answer to a usage report."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.body = bytearray()
        self._parser = httptools.HttpResponseParser(self)
        self._complete = False

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self._complete = True

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(UpstreamUnavailable())
            return
        if len(self.body) > MAX_JSON_RESPONSE_BYTES:
            self._finish(UpstreamUnavailable())
        elif self._complete:
            self.status = self._parser.get_status_code()
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(UpstreamUnavailable())

    def _finish(self, error: Refusal | None) -> None:
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


async def get_json(upstream: Upstream, path: str, *, timeout: float) -> tuple[int, Any]:
    """GET a small JSON document from llama-server with the master key: (status, parsed body)."""
    collector = await _exchange(upstream, "GET", path, timeout=timeout)
    try:
        return collector.status, json.loads(collector.body)
    except ValueError:
        raise UpstreamUnavailable() from None


async def send_request(upstream: Upstream, method: str, path: str, *, timeout: float, body: bytes = b"") -> int:
    """One request with the upstream's key, bodiless (a `DELETE`) or a `POST` of a small JSON `body`
    already encoded (an unload, the broker's usage reports): its status. It connects afresh, yet costs
    a third of the CPU of an httpx client's kept-alive exchange."""
    return (await _exchange(upstream, method, path, timeout=timeout, body=body)).status


async def _exchange(upstream: Upstream, method: str, path: str, *, timeout: float, body: bytes = b"") -> _Collector:
    try:
        authorization = upstream.authorization()
    except NotListening:
        raise UpstreamUnavailable() from None
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), path.encode("ascii"), upstream.host_header)
    if authorization:
        head += b"Authorization: " + authorization + b"\r\n"
    if body:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    transport, collector = await connect_upstream(upstream, _Collector, timeout=timeout)
    try:
        transport.write(head + b"Connection: close\r\n\r\n" + body)
        try:
            async with asyncio.timeout(timeout):
                await collector.done
        except TimeoutError:
            raise UpstreamTimeout() from None
    finally:
        transport.abort()
    return collector
