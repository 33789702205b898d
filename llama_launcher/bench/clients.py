"""The measuring client: raw asyncio protocols, so the client's own cost per event stays tiny.

A stream's bytes are counted as they arrive (`frames.FrameCounter`, one C-level `bytes.count`
per read), never parsed per event; the clock is read once per read. Every request asks for
`Connection: close`: each lane then ends a stream the same way, and no pooled connection can
carry a stale state from one measurement into the next.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import httptools

from llama_launcher.bench.frames import LAST_CHUNK, FrameCounter

P = TypeVar("P", bound=asyncio.BaseProtocol)

Address = str | tuple[str, int]


@dataclass(frozen=True)
class Target:
    """Where a lane's requests go: a unix socket path or a loopback (host, port), and a path."""

    address: Address
    path: str

    @property
    def host_header(self) -> bytes:
        if isinstance(self.address, str):
            return b"localhost"
        return f"{self.address[0]}:{self.address[1]}".encode()


@dataclass
class StreamResult:
    status: int
    started: float
    first: float | None
    ended: float
    chunks: int
    tokens: int
    done: bool
    negotiation: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.first is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.started


def build_request(method: str, target: Target, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header.decode()}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chat_request(target: Target, body: bytes, authorization: str | None) -> bytes:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if authorization:
        headers["Authorization"] = authorization
    return build_request("POST", target, headers, body)


class StreamProtocol(asyncio.Protocol):
    """One streamed response: the status line, then events counted as they come."""

    def __init__(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.in_body = False
        self.status = 0
        self.counter = FrameCounter()
        self.started = 0.0
        self.first: float | None = None
        self.last = 0.0
        self.first_event: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        connected = cast(asyncio.Transport, transport)
        self.transport = connected
        self.started = time.perf_counter()
        connected.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            first_line = bytes(self.head[: self.head.find(b"\r\n")]).split()
            self.status = int(first_line[1]) if len(first_line) > 1 and first_line[1].isdigit() else 0
            data = bytes(self.head[end + 4 :])
            self.in_body = True
            self.head = bytearray()
        if not data:
            return
        self.last = now
        if self.counter.feed(data) and self.first is None:
            self.first = now
            if not self.first_event.done():
                self.first_event.set_result(None)
        if data.endswith(LAST_CHUNK) and self.counter.done and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first_event.done():
            self.first_event.set_result(None)
        if not self.finished.done():
            self.finished.set_result(None)

    def result(self, negotiation: float | None = None) -> StreamResult:
        return StreamResult(
            status=self.status,
            started=self.started,
            first=self.first,
            ended=self.last or time.perf_counter(),
            chunks=self.counter.chunks,
            tokens=self.counter.tokens(),
            done=self.counter.done,
            negotiation=negotiation,
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def _connect(target: Target, factory: Callable[[], P]) -> tuple[asyncio.Transport, P]:
    """A unix socket path or a loopback (host, port): the one place a benchmark client connects."""
    loop = asyncio.get_running_loop()
    if isinstance(target.address, str):
        return await loop.create_unix_connection(factory, target.address)
    host, port = target.address
    return await loop.create_connection(factory, host, port)


async def open_stream(target: Target, request: bytes, *, timeout: float = 30.0) -> StreamProtocol:
    async with asyncio.timeout(timeout):
        _, protocol = await _connect(target, lambda: StreamProtocol(request))
    return protocol


async def stream_once(
    target: Target, request: bytes, *, timeout: float, negotiation: float | None = None
) -> StreamResult:
    """Send one chat request and read its stream to the end (or until `timeout`)."""
    protocol = await open_stream(target, request, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            await protocol.finished
    except TimeoutError:
        protocol.close()
    return protocol.result(negotiation)


class _Collector(asyncio.Protocol):
    """A whole small response (negotiation, health): httptools removes any chunked framing."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.parser = httptools.HttpResponseParser(self)
        self.body = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        connected = cast(asyncio.Transport, transport)
        self.transport = connected
        connected.write(self.request)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("the connection closed before a whole response"))


async def request_json(
    target: Target, method: str, headers: dict[str, str], body: bytes = b"", *, timeout: float = 30.0
) -> tuple[int, Any]:
    """One small request; (status, parsed JSON body or None)."""
    request = build_request(method, target, headers, body)
    async with asyncio.timeout(timeout):
        transport, collector = await _connect(target, lambda: _Collector(request))
        try:
            await collector.done
        finally:
            transport.close()
    try:
        parsed = json.loads(collector.body) if collector.body else None
    except ValueError:
        parsed = None
    return collector.parser.get_status_code(), parsed


async def negotiate(public: Target, access_token: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """POST /direct-stream as a script would: (seconds it took, the answer)."""
    started = time.perf_counter()
    status, answer = await request_json(
        Target(public.address, "/direct-stream"),
        "POST",
        {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"},
        json.dumps(body).encode(),
    )
    elapsed = time.perf_counter() - started
    if status != 200 or not isinstance(answer, dict) or not answer.get("supported"):
        raise ConnectionError(f"negotiation answered {status}")
    return elapsed, answer


class KeptAlive(asyncio.Protocol):
    """One kept-alive connection for requests one after another; each answer read whole (httptools)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.connection_lost(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("the connection closed before a whole response"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def send(self, request: bytes, *, timeout: float = 30.0) -> int:
        """Write one request and wait for its whole answer; its status."""
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        async with asyncio.timeout(timeout):
            await self.done
        return self.parser.get_status_code()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def keep_alive(target: Target) -> KeptAlive:
    _, protocol = await _connect(target, KeptAlive)
    return protocol


def kept_alive_request(target: Target, body: bytes, authorization: str | None) -> bytes:
    """`chat_request` without `Connection: close`: the connection stays for the next request."""
    return chat_request(target, body, authorization).replace(b"Connection: close\r\n", b"", 1)
