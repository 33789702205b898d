"""The request half: one client connection, its requests read and checked one at a time.

The request half runs once per request (`request_reader`'s parse, the token, the scope, the body's
shape, then one use of the token); then a `relay.Relay` carries the answer back.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from llama_direct.lanes import LANE_ROUTES
from llama_direct.refusals import (
    BAD_TARGET,
    BODY_TOO_LARGE,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    ORIGIN_REQUIRED,
    REQUEST_TIMEOUT,
    BrokerUnavailable,
    Overloaded,
    RateLimited,
    Refusal,
    RequestRefusal,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llama_launcher.gate.admission import forwarded_client
from llama_launcher.gate.config import Listener
from llama_launcher.gate.core import Gate
from llama_launcher.gate.http1 import Header, chunk, connection_tokens, cors_headers, find_head_end, simple_response
from llama_launcher.gate.outgoing import broker_request, lane_request
from llama_launcher.gate.pool import Attempts, Member
from llama_launcher.gate.relay import DechunkingRelay, Relay
from llama_launcher.gate.request_reader import BodyReader, Request, read_head
from llama_launcher.gate.scope import RequestHead, Route, allowed_preflight, check_request
from llama_launcher.gate.shapers import lane_body
from llama_launcher.gate.stream_ledger import Stream
from llama_launcher.gate.stream_watch import reset_on_close
from llama_launcher.gate.upstream import Upstream, connect, connect_upstream

log = logging.getLogger(__name__)

Opened = tuple[tuple[asyncio.Transport, Relay], Callable[[], bytes]]
"""A connected relay and what to send it: built last, since building it may still refuse (no upstream key yet)."""

PIPELINE_LIMIT = 64 * 1024
"""Bytes of a next request buffered while a response is still running; reading pauses beyond."""

_HEAD, _BODY, _BUSY, _CLOSED = range(4)

BASELINES = frozenset((route.method.encode(), route.path.encode()) for route in LANE_ROUTES if route.body is not None)
"""The broker routes whose body may be large: the baseline of each lane route that takes a body (the
same route off the lane; images inline). The rest are small."""


class ClientConnection(asyncio.Protocol):
    """One client connection: reads requests one at a time, and writes what answers them."""

    __slots__ = ("body", "body_limit", "body_waiter", "buf", "chunked_sink", "client", "close_after",
                 "counted", "gate", "http10", "listener", "origin", "paused", "peer", "reader", "received",
                 "relay", "scanned", "sent_head", "sink", "stalled", "state", "stream", "task", "timer",
                 "transport", "write_paused")

    def __init__(self, gate: Gate, listener: Listener) -> None:
        self.gate = gate
        self.listener = listener
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made, before any other callback; no None check on the hot path
        self.peer: str | None = None
        self.state = _HEAD
        self.buf = bytearray()
        self.scanned = 0
        self.reader: BodyReader | None = None
        self.body = bytearray()
        self.body_waiter: asyncio.Future[bytes] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.relay: Relay | None = None
        self.close_after = False
        self.http10 = False
        self.origin: str | None = None
        self.paused = False
        self.sent_head = False
        self.write_paused = False
        self.client: str | None = None
        self.counted: str | None = None
        self.body_limit = gate.config.max_body_bytes
        self.received = 0
        self.sink: asyncio.Transport | None = None
        self.chunked_sink = False
        self.stream: Stream[Member] | None = None
        self.stalled: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands stream protocols a Transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None
        gate = self.gate
        if self.peer is not None:  # a public (TCP) listener: the caps apply; gate.sock is the broker's
            refusal = gate.admission.admit(len(gate.connections), self.peer)
            if refusal is not None:
                self._overloaded(refusal)
                return
            self._count(True)
        gate.connections.add(self)
        self._arm(gate.config.head_timeout, self._on_head_timeout)

    def _overloaded(self, refusal: Overloaded) -> None:
        """Over a cap: 503 with Retry-After at once, then close; nothing of the request is read."""
        self.state = _CLOSED
        retry = [(b"Retry-After", str(refusal.retry_after).encode())]
        self.transport.write(simple_response(refusal.status, refusal.to_body(), retry, close=True))
        self.transport.close()

    def _count(self, arriving: bool) -> None:
        """Keep `admission.pending` right: a connection counts while its head or body is arriving."""
        admission = self.gate.admission
        if self.counted is not None:
            admission.leave(self.counted)
            self.counted = None
        address = self.client or (self.peer if self.peer not in admission.trusted else None)
        if arriving and address is not None:
            admission.enter(address)
            self.counted = address

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _BODY:
            self._drain_body(data)
            return
        self.buf += data
        if state == _HEAD:
            if self.counted is None and self.peer is not None:
                self._count(True)  # a kept-alive connection's next head has begun
            self._read_head()
        elif state == _BUSY and len(self.buf) > PIPELINE_LIMIT and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """A client that stops sending is gone: browsers never half-close a request."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        self._count(False)
        self._end_stream(finished=self.relay is None)
        if self.stalled is not None:
            self.stalled.cancel()
        self.sink = None
        self.gate.connections.discard(self)
        self._cancel_timer()
        if self.task is not None:
            self.task.cancel()
            self.task = None
        relay = self.relay
        if relay is not None:
            self.relay = None
            relay.detach()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.stalled = asyncio.get_running_loop().call_later(self.gate.config.send_timeout, self._on_stalled)
        if self.relay is not None:
            self.relay.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        if self.relay is not None:
            self.relay.resume()

    def _on_stalled(self) -> None:
        """Read nothing for `send_timeout` s: cut it and its upstream (llama-server would wait an hour)."""
        self.stalled = None
        log.info("client read nothing for %.0f s: cut", self.gate.config.send_timeout)
        self._end_stream(finished=False)
        reset_on_close(self.transport)
        self.shutdown()

    def _end_stream(self, *, finished: bool) -> None:
        stream, self.stream = self.stream, None
        self.gate.streams.close(stream, finished=finished)

    # -- the request head ------------------------------------------------------------------

    def _read_head(self) -> None:
        buf = self.buf
        while not self.scanned and buf.startswith(b"\r\n"):  # RFC 9112 2.2: stray CRLFs between requests
            del buf[:2]
        try:
            end = find_head_end(buf, self.scanned)
            if end < 0:
                self.scanned = len(buf)
                return
            request = read_head(bytes(buf[:end]))
        except Refusal as refusal:
            self._refuse(refusal, close=True)
            return
        rest = bytes(buf[end:])
        buf.clear()
        self.scanned = 0
        self._cancel_timer()
        self._start(request, rest)

    def _start(self, request: Request, rest: bytes) -> None:
        """Route one parsed request head (`rest`: what came after it); refusals needing no token are answered here."""
        self.http10 = request.http_version == b"1.0"
        self.close_after = self.http10 or b"close" in connection_tokens(request.headers)
        self.origin = next((v.decode("latin-1") for n, v in request.headers if n == b"origin"), None)
        self.state = _BODY
        self.body = bytearray()
        self.received = 0
        if self.peer is not None and self.peer in self.gate.admission.trusted:
            self.client = forwarded_client(
                self.peer, [v for n, v in request.headers if n == b"x-forwarded-for"], self.gate.admission.trusted
            )
            overloaded = self.gate.admission.over(self.client)
            if overloaded is not None:
                self._refuse(overloaded, close=True)
                return
            self._count(True)
        else:
            self.client = self.peer
        if request.method == b"CONNECT":
            self._refuse(RequestRefusal(METHOD_NOT_ALLOWED, "connect"), close=True)
            return
        if not request.target.startswith(b"/"):
            self._refuse(RequestRefusal(BAD_TARGET), close=True)
            return
        listener = self.listener
        target = request.target
        config = self.gate.config
        large = (listener.lane and target.startswith(self.gate.lane_prefix)) or (
            (request.method, target.partition(b"?")[0]) in BASELINES
        )
        self.body_limit = config.max_body_bytes if large else config.max_small_body_bytes
        if request.length is not None and request.length > self.body_limit:
            self._refuse(RequestRefusal(BODY_TOO_LARGE), close=True)
            return
        self.reader = BodyReader(request)
        self._drain_body(rest)
        if self.state == _CLOSED:
            return
        if self.state == _BODY:  # one deadline for the whole body, never re-armed by a read
            self._arm(config.body_timeout, self._on_body_timeout)
        if listener.lane and target.startswith(self.gate.lane_prefix):
            if listener.cors and request.method == b"OPTIONS":
                self._run(self._serve_preflight(request))
            else:
                self._run(self._forward(self._open_lane(request)))
        elif listener.health and target == b"/health" and request.method in (b"GET", b"HEAD"):
            self._run(self._serve_health(request.method == b"HEAD"))
        elif listener.broker:
            self._run(self._forward(self._open_broker(request)))
        else:
            self._refuse(RequestRefusal(NOT_FOUND))

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.task = asyncio.get_running_loop().create_task(coroutine)

    # -- the request body ------------------------------------------------------------------

    def _drain_body(self, data: bytes) -> None:
        reader = self.reader
        assert reader is not None
        try:
            piece = reader.feed(data)
        except RequestRefusal as refusal:
            self._fail(refusal)
            return
        if piece:
            self.received += len(piece)
            if self.received > self.body_limit:
                self._fail(RequestRefusal(BODY_TOO_LARGE))
                return
            if self.sink is None:
                self.body += piece
            else:
                self._pour(piece)
        if not reader.done:
            return
        if self.sink is not None and self.chunked_sink:
            self.sink.write(b"0\r\n\r\n")
        self.sink = None
        self.buf = bytearray(reader.trailing)
        self.reader = None
        self.state = _BUSY
        self._count(False)
        self._cancel_timer()
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._take_body())

    def _take_body(self) -> bytes:
        """The whole body, released here: a held stream must not keep a 20 MB upload alive."""
        body, self.body = bytes(self.body), bytearray()
        return body

    async def _read_body(self) -> bytes:
        if self.state != _BODY:
            return self._take_body()
        reader = self.reader
        assert reader is not None
        if reader.expects_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.body_waiter = asyncio.get_running_loop().create_future()
        try:
            return await self.body_waiter
        finally:
            self.body_waiter = None

    # -- what answers a request ------------------------------------------------------------

    async def _forward(self, opening: Awaitable[Opened]) -> None:
        """Connect, then hand the request over; a refusal at any step is answered, an opened relay closed."""
        relay: Relay | None = None
        try:
            (transport, relay), outgoing = await opening
            self._hand_over(transport, relay, outgoing())
            relay = None
        except Refusal as refusal:
            self._refuse(refusal)
        finally:
            if relay is not None:
                relay.detach()

    async def _open_lane(self, request: Request) -> Opened:
        """Check the token (a use is spent there, first), the route and the body, then connect to llama-server."""
        gate = self.gate
        head = RequestHead(request.method.decode("ascii"), request.target, list(request.headers))
        claims = await gate.authorize(head)
        route = check_request(head, claims, lane_prefix=gate.config.lane_prefix)
        body = await self._read_body()
        self.stream = gate.streams.open(claims.sub, route)
        attempts = await gate.pool.route(claims.grant.model, route.lane, route.conversation_id)
        body, target = await lane_body(gate, route, claims, attempts, body)
        if route.lane.conversation == "stops":
            gate.streams.cancelled(route, attempts.members)
        cors = claims.grant.origin if self.listener.cors else None
        return await self._connect_lane(attempts, lambda: self._relay(request, cors, strip_cors=True),
                                        lambda upstream: lane_request(upstream, route, target, body) + body, route)

    async def _connect_lane(self, attempts: Attempts, relay: Callable[[], Relay],
                            outgoing: Callable[[Upstream], bytes], route: Route) -> Opened:
        """Connect to the first upstream that takes the connection; with several, the relay may hand
        the request to the next one if this one fails before its head (`Relay.fallback`)."""
        pool, timeout = self.gate.pool, self.gate.config.connect_timeout
        while True:
            member = attempts.next()
            try:
                transport, opened = await connect_upstream(member.upstream, relay, timeout=timeout)
            except (UpstreamUnavailable, UpstreamTimeout) as refusal:
                attempts.failed(refusal)
                if not pool.single:
                    member.failed()
                continue
            self.gate.streams.held_by(self.stream, member)
            if not pool.single:
                await pool.chosen(member, route.lane, route.conversation_id)
                opened.on_end = member.release
                opened.fallback = functools.partial(self._fall_back, member, attempts, relay, outgoing, route)
            return (transport, opened), functools.partial(outgoing, member.upstream)

    def _fall_back(self, member: Member, attempts: Attempts, relay: Callable[[], Relay],
                   outgoing: Callable[[Upstream], bytes], route: Route) -> bool:
        """`member` failed before its head: hand the request to the next upstream, if one is left and
        the client is still waiting (False: the failure goes to the client as it is)."""
        member.failed()
        if self.state == _CLOSED or self.sent_head or not attempts.left():
            return False
        self.relay = None
        self._run(self._forward(self._connect_lane(attempts, relay, outgoing, route)))
        return True

    async def _open_broker(self, request: Request) -> Opened:
        """Connect to the broker at once: a body still arriving is relayed as it comes, never held whole.

        So the broker sees the head first and refuses an anonymous request before its body arrives,
        and the gate's memory grows only with bytes that arrived and the broker has not read yet.
        """
        try:
            connected = await connect(
                self.gate.config.broker_socket,
                lambda: self._relay(request, None, strip_cors=False),
                timeout=self.gate.config.connect_timeout,
            )
        except (UpstreamUnavailable, UpstreamTimeout):
            raise BrokerUnavailable() from None
        return connected, lambda: self._broker_outgoing(request, connected[0])

    async def _serve_health(self, head_only: bool) -> None:
        body = json.dumps(await self.gate.health_answer(), separators=(",", ":")).encode()
        response = simple_response(200, body, close=self._closing())
        self._answer(response[: len(response) - len(body)] if head_only else response)

    async def _serve_preflight(self, request: Request) -> None:
        headers = {name.decode("ascii"): value.decode("latin-1") for name, value in request.headers}
        origin = headers.get("origin")
        if origin is None:
            self._refuse(RequestRefusal(ORIGIN_REQUIRED, "preflight"))
            return
        answer = allowed_preflight(
            origin,
            self.gate.allowed_origins,
            headers.get("access-control-request-method"),
            headers.get("access-control-request-headers"),
            target=request.target,
            lane_prefix=self.gate.config.lane_prefix,
        )
        if isinstance(answer, Refusal):
            self._refuse(answer)
        else:
            self._answer(simple_response(204, b"", answer, close=self._closing()))

    def _broker_outgoing(self, request: Request, transport: asyncio.Transport) -> bytes:
        """The head and what body arrived; what is still to come goes to `transport` as it arrives."""
        proto = b"https" if self.listener.tls else b"http"
        if self.peer in self.gate.admission.trusted:
            proto = next((v for n, v in request.headers if n == b"x-forwarded-proto"), proto).split(b",")[0].strip()
        body = self._take_body()
        if self.state != _BODY:
            return broker_request(request, client=self.client, proto=proto, length=len(body)) + body
        length = request.length
        self.sink, self.chunked_sink = transport, length is None
        head = broker_request(request, client=self.client, proto=proto, length=length, chunked=length is None)
        if self.reader is not None and self.reader.expects_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return head + (chunk(body) if self.chunked_sink and body else body)

    def _pour(self, data: bytes) -> None:
        sink = self.sink
        assert sink is not None
        sink.write(chunk(data) if self.chunked_sink else data)

    def _relay(self, request: Request, cors: str | None, *, strip_cors: bool) -> Relay:
        factory = DechunkingRelay if self.http10 else Relay
        return factory(self, cors, strip_cors=strip_cors, head_only=request.method == b"HEAD")

    def _hand_over(self, transport: asyncio.Transport, relay: Relay, data: bytes) -> None:
        """From here on the response half runs in callbacks: the task is done with this request."""
        self.relay = relay
        self.task = None
        transport.write(data)
        relay.arm(self.gate.config.upstream_head_timeout)
        if self.write_paused:
            relay.pause()

    # -- responses and the connection's life ------------------------------------------------

    def _closing(self) -> bool:
        """Whether this answer ends the connection: asked for, HTTP/1.0, or a body left unread."""
        return self.close_after or self.state == _BODY

    def _refuse(self, refusal: Refusal, *, close: bool = False) -> None:
        if self.state == _CLOSED:
            return
        if self.sent_head:
            self._close()
            return
        log.debug("refused status=%d code=%s", refusal.status, refusal.code)
        headers: list[Header] = [(name.encode(), value.encode()) for name, value in refusal.headers]
        if self.listener.cors and self.origin in self.gate.allowed_origins:
            headers += cors_headers(self.origin)
        if isinstance(refusal, (Overloaded, RateLimited)):
            headers.append((b"Retry-After", str(refusal.retry_after).encode()))
        close = close or self._closing()
        self.transport.write(simple_response(refusal.status, refusal.to_body(), headers, close=close))
        self.task = None
        if close:
            self._close()
        else:
            self._next_request()

    def _fail(self, refusal: Refusal) -> None:
        """The body cannot be read on: answer, stop any work on this request, and close."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._refuse(refusal, close=True)

    def _answer(self, response: bytes) -> None:
        self.transport.write(response)
        self.task = None
        if self._closing():
            self._close()
        else:
            self._next_request()

    def relay_head(self, head: bytes) -> None:
        self.sent_head = True
        self.transport.write(head)

    def relay_done(self, close: bool) -> None:
        self.relay = None
        self.sink = None
        if close or self.close_after or self.state == _BODY:  # answered before its body ended
            self._close()
        else:
            self._next_request()

    def relay_failed(self, refusal: Refusal) -> None:
        """Upstream went away or timed out: an error before the head, a truncated stream after it."""
        self.relay = None
        self.sink = None
        if self.sent_head:
            self._close()
        else:
            self._refuse(refusal)

    def _next_request(self) -> None:
        self.state = _HEAD
        self._count(False)
        self._end_stream(finished=True)
        if self.peer in self.gate.admission.trusted:
            self.client = None  # a proxy's next request may be another client's
        self.sent_head = False
        self.origin = None
        self.body = bytearray()
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._arm(self.gate.config.head_timeout, self._on_head_timeout)
        if self.buf:
            asyncio.get_running_loop().call_soon(self._continue)

    def _continue(self) -> None:
        if self.state == _HEAD and self.buf:
            self._read_head()

    def _close(self) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self._cancel_timer()
        self.transport.close()

    def shutdown(self) -> None:
        """The gate is stopping: drop this connection and its upstream at once."""
        if self.task is not None:
            self.task.cancel()
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.detach()
        self.transport.abort()

    def _arm(self, delay: float, callback: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_head_timeout(self) -> None:
        self.timer = None
        if self.state != _HEAD:
            return
        if self.buf:
            self._refuse(RequestRefusal(REQUEST_TIMEOUT), close=True)
        else:
            self._close()

    def _on_body_timeout(self) -> None:
        self.timer = None
        if self.state == _BODY:
            self._fail(RequestRefusal(REQUEST_TIMEOUT))
