"""The response half of a lane or broker request: the upstream's answer relayed to the client as read.

This is the hot path: the upstream response head is parsed and rewritten (CORS, hop-by-hop), then
every body read is written to the client as it arrived, framing included, while httptools' C parser
is fed the same bytes with no Python callback per chunk, only to notice where the message ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar, Protocol

import httptools

from llama_direct.refusals import (
    Refusal,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llama_launcher.gate.http1 import (
    HOP_BY_HOP,
    MAX_HEAD_BYTES,
    Header,
    cors_headers,
    response_head,
)
from llama_launcher.gate.usage_tail import UsageTail


class RelayClient(Protocol):
    """The client side a relay writes to (`connection.RelayClient`)."""

    transport: asyncio.Transport

    @property
    def http10(self) -> bool: ...

    @property
    def close_after(self) -> bool: ...

    def relay_head(self, head: bytes) -> None: ...

    def relay_body_began(self) -> None: ...

    def relay_done(self, close: bool) -> None: ...

    def relay_failed(self, refusal: Refusal) -> None: ...


_RESPONSE_DROPPED = HOP_BY_HOP - {b"transfer-encoding"}


class Relay(asyncio.Protocol):
    """One upstream connection: rewrites the response head, then passes body bytes through as read.

    `parser` sees every byte only to notice the end of the message: llhttp in C, with no `on_body`,
    so no Python call per chunk. The client gets the upstream framing as it is, so every byte after
    the head is the upstream's byte.
    """

    __slots__ = (
        "awaiting_body",
        "chunked",
        "client",
        "complete",
        "cors",
        "fallback",
        "head",
        "head_only",
        "headers",
        "on_end",
        "parser",
        "reason",
        "strip_cors",
        "tail",
        "timer",
        "transport",
        "until_eof",
    )

    PASS_THROUGH: ClassVar[bool] = True
    """Whether body bytes go to the client as read, framing included (False: `on_body` writes them)."""

    def __init__(self, client: RelayClient, cors: str | None, *, strip_cors: bool, head_only: bool) -> None:
        self.client: RelayClient | None = client
        self.cors = cors
        self.strip_cors = strip_cors
        self.head_only = head_only
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made, before any other callback; no None check on the hot path
        self.head: bytearray | None = bytearray()
        self.headers: list[Header] | None = []
        self.reason = b""
        self.complete = False
        self.until_eof = False
        self.chunked = False
        self.tail: UsageTail | None = None
        """A generating request's: fed a copy of every body byte, for the usage at its end (`usage_tail`)."""
        self.awaiting_body = True
        """No body byte relayed yet: the first one is reported once (`relay_body_began`, time to first byte)."""
        self.timer: asyncio.TimerHandle | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.on_end: Callable[[], None] | None = None
        """Called once when this relay ends, however it ends (an upstream's in-flight count)."""
        self.fallback: Callable[[], bool] | None = None
        """Before any answer reached the client, a 502/503 or a lost connection may be retried on
        another upstream: True means that retry took the request over, and this relay just ends."""

    # httptools callbacks: the head, and the message's end

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers is not None:
            self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.complete = True

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands stream protocols a Transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        if self.head is not None:
            self._head_received(client, data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamUnavailable())
            return
        if self.awaiting_body:
            self.awaiting_body = False
            client.relay_body_began()
        if self.tail is not None:
            self.tail.feed(data)
        if self.PASS_THROUGH:
            client.transport.write(data)
        if self.complete:
            self._done(client)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        """A request body relayed as it arrives outruns the upstream's reading: stop reading the client."""
        if self.client is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        if client is None:
            return
        self.client = None
        self._cancel_timer()
        self._end()
        if self.head is not None and self.fallback is not None and self.fallback():
            return
        if self.head is None and self.until_eof:
            client.relay_done(close=True)
        else:
            client.relay_failed(UpstreamUnavailable())

    # the client's side

    def arm(self, timeout: float) -> None:
        self.timer = asyncio.get_running_loop().call_later(timeout, self._on_timeout)

    def detach(self) -> None:
        """The client is gone: close upstream now, so llama-server stops generating."""
        self.client = None
        self._cancel_timer()
        self._end()
        self.transport.abort()

    def pause(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    # internals

    def _head_received(self, client: RelayClient, data: bytes) -> None:
        head = self.head
        assert head is not None
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD_BYTES:
                self._fail(UpstreamUnavailable())
            return
        end += 4
        raw = bytes(head)
        self.head = None
        self._cancel_timer()
        try:
            self.parser.feed_data(raw[:end])
        except httptools.HttpParserError:
            self._fail(UpstreamUnavailable())
            return
        status = self.parser.get_status_code()
        headers, self.headers = self.headers or [], None
        names = [name.lower() for name, _ in headers]
        if self.tail is not None:
            self.chunked = b"transfer-encoding" in names
        if status < 200:
            self._fail(UpstreamUnavailable())
            return
        if status in (502, 503) and self.fallback is not None and self.fallback():
            self.client = None
            self._end()
            self.transport.abort()
            return
        client_head = self._client_head(client, status, headers, names)
        if self.head_only or status in (204, 304):
            client.relay_head(client_head)
            self._done(client)
        elif end < len(raw) and self.PASS_THROUGH:
            self._head_with_body(client, client_head, raw[end:])
        else:
            client.relay_head(client_head)
            if end < len(raw):
                self.data_received(raw[end:])
            elif self.complete:
                self._done(client)

    def _head_with_body(self, client: RelayClient, client_head: bytes, body: bytes) -> None:
        """Body bytes that came in the head's read go out in the head's write: one send, not two."""
        try:
            self.parser.feed_data(body)
        except httptools.HttpParserError:
            client.relay_head(client_head)
            self._fail(UpstreamUnavailable())
            return
        if self.tail is not None:
            self.tail.feed(body)
        client.relay_head(client_head + body)
        self.awaiting_body = False
        client.relay_body_began()
        if self.complete:
            self._done(client)

    def _client_head(self, client: RelayClient, status: int, headers: list[Header], names: list[bytes]) -> bytes:
        """The upstream head, minus hop-by-hop headers and llama-server's any-origin CORS; `names` are the
        headers' names in lower case, lowered once for every test here."""
        framed = b"content-length" in names or b"transfer-encoding" in names
        self.until_eof = not framed and not self.head_only and status not in (204, 304)
        dechunk = client.http10
        strip_cors = self.strip_cors
        kept = [
            header
            for header, name in zip(headers, names, strict=True)
            if name not in _RESPONSE_DROPPED
            and not (strip_cors and name.startswith(b"access-control-"))
            and not (dechunk and name == b"transfer-encoding")
        ]
        if self.cors is not None:
            kept.extend(cors_headers(self.cors))
        if self.until_eof or client.close_after:
            kept.append((b"Connection", b"close"))
        return response_head(status, self.reason or b"OK", kept)

    def _done(self, client: RelayClient) -> None:
        self.client = None
        self._cancel_timer()
        self._end()
        self.transport.abort()
        client.relay_done(close=self.until_eof)

    def _fail(self, refusal: Refusal) -> None:
        client, self.client = self.client, None
        self._cancel_timer()
        self._end()
        self.transport.abort()
        if client is not None:
            client.relay_failed(refusal)

    def _end(self) -> None:
        on_end = self.on_end
        if on_end is not None:
            self.on_end = None
            on_end()

    def _on_timeout(self) -> None:
        self.timer = None
        if self.head is not None:
            self._fail(UpstreamTimeout())

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class DechunkingRelay(Relay):
    """For an HTTP/1.0 client, which cannot read chunked framing: body bytes go out unframed.

    Defining `on_body` makes httptools call it per chunk, a cost only these clients pay; the
    answer is close-delimited (`close_after` is always set for HTTP/1.0).
    """

    __slots__ = ()
    PASS_THROUGH = False

    def on_body(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            client.transport.write(data)
