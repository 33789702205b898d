"""The gate's I/O shell: parse each request once, check it once, then relay bytes untouched.

Three listeners share this code (`Listener`):

- public, one-port mode: `/direct/…` is the lane; every other request is relayed to the broker's
  unix socket, with `X-Forwarded-For` / `X-Forwarded-Proto` set by the gate alone;
- public, two-port mode: the lane only, cross-origin, so the gate answers preflight itself and puts
  CORS headers for the app's origins on its answers;
- private (`gate.sock`): the lane for the broker's baseline, and `GET /health`.

The request half runs once per request (h11 plus `http1.check_raw_head`, the token, the scope, the
body's shape, then one use of the token). The response half is the hot path: the upstream response
head is parsed and rewritten (CORS, hop-by-hop), then every body read is written to the client as
it arrived, framing included, while httptools' C parser is fed the same bytes with no Python
callback per chunk, only to notice where the message ends. Backpressure runs both ways through
`pause_reading`/`resume_reading`, and a disconnect on either side closes the other at once, so a
browser that leaves frees its llama-server slot.

Request bodies are read whole (at most `max_body_bytes`) before anything is sent on: the lane must
shape the chat body anyway, and the broker's bodies are small forms and JSON. `OPTIONS` is answered
by the gate only where the lane is cross-origin (two-port mode); elsewhere it is one more lane
request without a token (401), since a same-origin page never sends a preflight.

HTTP/1.0 clients (nginx's default `proxy_http_version`) are served deliberately: upstream is always
spoken to in HTTP/1.1, and the answer goes back close-delimited, with the chunked framing removed
(one Python callback per chunk, for those clients only). Such a connection is never kept alive.

Held streams are the memory that counts (1,000 of them should cost about twice a bare relay), so a
stream holds two small `__slots__` protocols, two transports and one parser; the per-request task
and the h11 connection are gone once the relay starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import h11
import httptools

from broker.refusals import MalformedToken, MissingToken, Refusal, RequestRefusal, TokenRevoked, TokenSpent, UnknownKey
from broker.replay import MemoryReplayStore
from broker.tokens import LEEWAY_SECONDS, Claims, verify
from llama_launcher.gate.bounds import FALLBACK_CONTEXT
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.http1 import (
    FORWARDING,
    HOP_BY_HOP,
    MAX_HEAD_BYTES,
    Header,
    VersionNotSupported,
    bad_request,
    body_too_large,
    check_raw_head,
    connection_tokens,
    cors_headers,
    end_to_end,
    find_head_end,
    head_timeout,
    request_head,
    response_head,
    simple_response,
)
from llama_launcher.gate.keyset import KeySet
from llama_launcher.gate.scope import RequestHead, Route, allowed_preflight, check_request
from llama_launcher.gate.shaping import ShapingPolicy, shape_chat_body
from llama_launcher.gate.upstream import (
    BrokerUnavailable,
    Upstream,
    UpstreamTimeout,
    UpstreamUnavailable,
    connect,
    connect_upstream,
    get_json,
)

log = logging.getLogger("llama_direct.gate")

PIPELINE_LIMIT = 64 * 1024
"""Bytes of a next request buffered while a response is still running; reading pauses beyond."""

SHAPE_IN_THREAD_BYTES = 256 * 1024
"""Bodies above this (images) are shaped off the event loop, so decoding them stalls no stream."""

HEALTH_INTERVAL = 0.5
HEALTH_TIMEOUT = 2.0
PROPS_RETRY = 5.0

_HEAD, _BODY, _BUSY, _CLOSED = range(4)


@dataclass(frozen=True)
class Listener:
    """What one listening socket serves."""

    lane: bool = True
    broker: bool = False
    health: bool = False
    cors: bool = False
    tls: bool = False


class Health:
    """llama-server's state as `/health` reports it, asked at most every 0.5 s; `/props` once per start.

    A respawned llama-server has a new key, so the key's digest tells whether `/props` (and so
    `vision` and one slot's `context`) belongs to the llama-server running now. A failed read is
    retried at most every `PROPS_RETRY` seconds, so a llama-server without `/props` does not cost
    every chat a round trip.
    """

    def __init__(self, upstream: Upstream, model: str) -> None:
        self.upstream = upstream
        self.model = model
        self.vision = False
        self.context = FALLBACK_CONTEXT
        self._props_for: bytes | None = None
        self._props_failed_at = -math.inf
        self._props_task: asyncio.Task[None] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = -math.inf
        self._snapshot_task: asyncio.Task[dict[str, Any]] | None = None

    async def snapshot(self) -> dict[str, Any]:
        if time.monotonic() - self._snapshot_at < HEALTH_INTERVAL and self._snapshot is not None:
            return self._snapshot
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = asyncio.ensure_future(self._query())
        return await asyncio.shield(self._snapshot_task)

    async def ensure_props(self) -> None:
        """Learn `vision` and `context` from `/props` unless read from the llama-server running now."""
        digest = self._key_digest()
        if digest is None or digest == self._props_for:
            return
        if time.monotonic() - self._props_failed_at < PROPS_RETRY:
            return
        if self._props_task is None or self._props_task.done():
            self._props_task = asyncio.ensure_future(self._read_props(digest))
        await asyncio.shield(self._props_task)

    def _key_digest(self) -> bytes | None:
        try:
            return hashlib.sha256(self.upstream.authorization()).digest()
        except RuntimeError:
            return None

    async def _read_props(self, digest: bytes) -> None:
        try:
            status, props = await get_json(self.upstream, "/props", timeout=HEALTH_TIMEOUT)
        except Refusal:
            status, props = 0, None
        if status == 200 and isinstance(props, dict):
            modalities = props.get("modalities")
            self.vision = isinstance(modalities, dict) and modalities.get("vision") is True
            settings = props.get("default_generation_settings")
            n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
            if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0:
                self.context = n_ctx
            self._props_for = digest
        else:
            self._props_failed_at = time.monotonic()

    async def _query(self) -> dict[str, Any]:
        ready = False
        slots: dict[str, int | None] = {"total": None, "busy": None}
        if self.upstream.is_ready():
            with contextlib.suppress(Refusal):
                status, _ = await get_json(self.upstream, "/health", timeout=HEALTH_TIMEOUT)
                ready = status == 200
        if ready:
            with contextlib.suppress(Refusal):
                status, found = await get_json(self.upstream, "/slots", timeout=HEALTH_TIMEOUT)
                if status == 200 and isinstance(found, list):
                    busy = sum(1 for slot in found if isinstance(slot, dict) and slot.get("is_processing"))
                    slots = {"total": len(found), "busy": busy}
            await self.ensure_props()
        snapshot = {"gate": "ok", "model_ready": ready, "model": self.model, "vision": self.vision,
                    "slots": slots}
        self._snapshot, self._snapshot_at = snapshot, time.monotonic()
        return snapshot


class Gate:
    """State shared by every connection of one gate process."""

    def __init__(
        self, config: GateConfig, upstream: Upstream, keyset: KeySet, *, started_at: float | None = None
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.keyset = keyset
        self.replay = MemoryReplayStore()
        self.not_issued_before = math.floor(time.time() if started_at is None else started_at)
        self.health = Health(upstream, config.model)
        self.connections: set[ClientConnection] = set()
        self.allowed_origins = frozenset(config.allowed_origins)
        self.lane_prefix = (config.lane_prefix + "/").encode()

    @property
    def policy(self) -> ShapingPolicy:
        health = self.health
        return ShapingPolicy(max_body_bytes=self.config.max_body_bytes, vision=health.vision, context=health.context)

    async def authorize(self, head: RequestHead) -> Claims:
        """The verified, unrevoked claims of the request's bearer token (uses are spent later)."""
        token = _bearer_token(head.headers)
        try:
            claims = self._verify(token)
        except UnknownKey:
            await self.keyset.refresh_for_unknown_kid()
            claims = self._verify(token)
        if self.keyset.revocations.is_revoked(claims):
            raise TokenRevoked()
        return claims

    def _verify(self, token: str) -> Claims:
        return verify(
            token,
            keys=self.keyset.keys,
            audience=self.config.audience,
            issuer=self.config.issuer,
            now=time.time(),
            not_issued_before=self.not_issued_before,
        )

    def spend(self, claims: Claims) -> None:
        if not self.replay.consume(claims.jti, claims.grant.uses, claims.exp + LEEWAY_SECONDS, time.time()):
            raise TokenSpent()


def _bearer_token(headers: list[Header]) -> str:
    """The token of the one `Authorization: Bearer` header; nothing else is ever read as a token."""
    values = [value for name, value in headers if name == b"authorization"]
    if not values:
        raise MissingToken()
    scheme, _, token = values[0].partition(b" ")
    if len(values) > 1 or scheme.lower() != b"bearer" or not token or b" " in token:
        raise MalformedToken()
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedToken() from None


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return None


class ClientConnection(asyncio.Protocol):
    """One client connection: reads requests one at a time, and writes what answers them."""

    __slots__ = (
        "body",
        "body_waiter",
        "buf",
        "close_after",
        "gate",
        "h11",
        "http10",
        "listener",
        "origin",
        "paused",
        "peer",
        "relay",
        "scanned",
        "sent_head",
        "state",
        "task",
        "timer",
        "transport",
        "write_paused",
    )

    def __init__(self, gate: Gate, listener: Listener) -> None:
        self.gate = gate
        self.listener = listener
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer: str | None = None
        self.state = _HEAD
        self.buf = bytearray()
        self.scanned = 0
        self.h11: h11.Connection | None = None
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

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None
        self.gate.connections.add(self)
        self._arm(self.gate.config.head_timeout, self._on_head_timeout)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _BODY:
            self._arm(self.gate.config.body_timeout, self._on_body_timeout)
            self.h11.receive_data(data)  # type: ignore[union-attr]
            self._drain_body()
            return
        self.buf += data
        if state == _HEAD:
            self._read_head()
        elif state == _BUSY and len(self.buf) > PIPELINE_LIMIT and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """A client that stops sending is gone: browsers never half-close a request."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
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
        if self.relay is not None:
            self.relay.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.relay is not None:
            self.relay.resume()

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
            check_raw_head(bytes(buf[:end]))
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
            conn.receive_data(bytes(buf))
            event = conn.next_event()
        except Refusal as refusal:
            self._refuse(refusal, close=True)
            return
        except h11.RemoteProtocolError as error:
            status = error.error_status_hint if 400 <= error.error_status_hint < 500 else 400
            self._refuse(RequestRefusal(status, "bad_request", "The request is not valid HTTP/1.1."), close=True)
            return
        buf.clear()
        self.scanned = 0
        self._cancel_timer()
        if not isinstance(event, h11.Request):
            self._refuse(bad_request("bad_request", "The request is not valid HTTP/1.1."), close=True)
            return
        self.h11 = conn
        self._start(event)

    def _start(self, request: h11.Request) -> None:
        """Route one parsed request head; refusals that need no token are answered here."""
        if request.http_version not in (b"1.1", b"1.0"):
            self._refuse(VersionNotSupported(), close=True)
            return
        self.http10 = request.http_version == b"1.0"
        self.close_after = self.http10 or b"close" in connection_tokens(request.headers)
        self.origin = next((v.decode("latin-1") for n, v in request.headers if n == b"origin"), None)
        self.state = _BODY
        self.body = bytearray()
        if request.method == b"CONNECT":
            self._refuse(RequestRefusal(405, "method_not_allowed", "CONNECT is not served."), close=True)
            return
        if not request.target.startswith(b"/"):
            self._refuse(bad_request("bad_target", "The request target must be a path."), close=True)
            return
        length = _content_length(request)
        if length is not None and length > self.gate.config.max_body_bytes:
            self._refuse(body_too_large(), close=True)
            return
        self._drain_body()
        if self.state == _CLOSED:
            return
        listener = self.listener
        target = request.target
        if listener.lane and target.startswith(self.gate.lane_prefix):
            if listener.cors and request.method == b"OPTIONS":
                self._run(self._serve_preflight(request))
            else:
                self._run(self._serve_lane(request))
        elif listener.health and target == b"/health" and request.method in (b"GET", b"HEAD"):
            self._run(self._serve_health(request.method == b"HEAD"))
        elif listener.broker:
            self._run(self._serve_broker(request))
        else:
            self._refuse(RequestRefusal(404, "not_found", "Nothing is served at this path."))

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.task = asyncio.get_running_loop().create_task(coroutine)

    # -- the request body ------------------------------------------------------------------

    def _drain_body(self) -> None:
        conn = self.h11
        assert conn is not None
        limit = self.gate.config.max_body_bytes
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return
                if type(event) is h11.Data:
                    self.body += event.data
                    if len(self.body) > limit:
                        self._fail(body_too_large())
                        return
                elif type(event) is h11.EndOfMessage:
                    break
        except h11.RemoteProtocolError:
            self._fail(bad_request("bad_body", "The request body's framing is not valid."))
            return
        self.buf = bytearray(conn.trailing_data[0])
        self.h11 = None
        self.state = _BUSY
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
        conn = self.h11
        assert conn is not None
        if conn.they_are_waiting_for_100_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.body_waiter = asyncio.get_running_loop().create_future()
        self._arm(self.gate.config.body_timeout, self._on_body_timeout)
        try:
            return await self.body_waiter
        finally:
            self.body_waiter = None

    # -- what answers a request ------------------------------------------------------------

    async def _serve_lane(self, request: h11.Request) -> None:
        gate = self.gate
        head = RequestHead(request.method.decode("ascii"), request.target, list(request.headers))
        relay: Relay | None = None
        try:
            claims = await gate.authorize(head)
            route = check_request(head, claims, lane_prefix=gate.config.lane_prefix)
            body = await self._read_body()
            if route.kind == "chat":
                await gate.health.ensure_props()
                if len(body) > SHAPE_IN_THREAD_BYTES:
                    body = await asyncio.to_thread(shape_chat_body, body, claims.grant, gate.policy)
                else:
                    body = shape_chat_body(body, claims.grant, gate.policy)
            elif body:
                raise bad_request("unexpected_body", "This route takes no request body.")
            cors = claims.grant.origin if self.listener.cors else None
            transport, relay = await connect_upstream(
                gate.upstream, lambda: self._relay(request, cors, strip_cors=True),
                timeout=gate.config.connect_timeout,
            )
            upstream_head = _lane_request(gate.upstream, route, body)
            gate.spend(claims)
            self._hand_over(transport, relay, upstream_head + body)
            relay = None
        except Refusal as refusal:
            self._refuse(refusal)
        finally:
            if relay is not None:
                relay.detach()

    async def _serve_broker(self, request: h11.Request) -> None:
        relay: Relay | None = None
        try:
            body = await self._read_body()
            try:
                transport, relay = await connect(
                    self.gate.config.broker_socket,
                    lambda: self._relay(request, None, strip_cors=False),
                    timeout=self.gate.config.connect_timeout,
                )
            except (UpstreamUnavailable, UpstreamTimeout):
                raise BrokerUnavailable() from None
            self._hand_over(transport, relay, self._broker_request(request, body) + body)
            relay = None
        except Refusal as refusal:
            self._refuse(refusal)
        finally:
            if relay is not None:
                relay.detach()

    async def _serve_health(self, head_only: bool) -> None:
        body = json.dumps(await self.gate.health.snapshot(), separators=(",", ":")).encode()
        response = simple_response(200, body, close=self._closing())
        self._answer(response[: len(response) - len(body)] if head_only else response)

    async def _serve_preflight(self, request: h11.Request) -> None:
        headers = {name.decode("ascii"): value.decode("latin-1") for name, value in request.headers}
        origin = headers.get("origin")
        if origin is None:
            self._refuse(RequestRefusal(403, "origin_required", "A preflight needs an Origin."))
            return
        answer = allowed_preflight(
            origin,
            self.gate.allowed_origins,
            headers.get("access-control-request-method"),
            headers.get("access-control-request-headers"),
        )
        if isinstance(answer, Refusal):
            self._refuse(answer)
        else:
            self._answer(simple_response(204, b"", answer, close=self._closing()))

    def _broker_request(self, request: h11.Request, body: bytes) -> bytes:
        """The client's request as the broker receives it: its own headers, plus forwarding ones."""
        dropped = FORWARDING | {b"content-length", b"expect"}
        headers = [(n, v) for n, v in end_to_end(request.headers.raw_items()) if n.lower() not in dropped]
        if self.peer is not None:
            headers.append((b"X-Forwarded-For", self.peer.encode("ascii")))
        headers.append((b"X-Forwarded-Proto", b"https" if self.listener.tls else b"http"))
        if body or request.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            headers.append((b"Content-Length", str(len(body)).encode()))
        headers.append((b"Connection", b"close"))
        return request_head(request.method, request.target, headers)

    def _relay(self, request: h11.Request, cors: str | None, *, strip_cors: bool) -> Relay:
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
        headers: list[Header] = []
        if self.listener.cors and self.origin in self.gate.allowed_origins:
            headers = cors_headers(self.origin)  # type: ignore[arg-type]
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
        if close or self.close_after:
            self._close()
        else:
            self._next_request()

    def relay_failed(self, refusal: Refusal) -> None:
        """Upstream went away or timed out: an error before the head, a truncated stream after it."""
        self.relay = None
        if self.sent_head:
            self._close()
        else:
            self._refuse(refusal)

    def _next_request(self) -> None:
        self.state = _HEAD
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
            self._refuse(head_timeout(), close=True)
        else:
            self._close()

    def _on_body_timeout(self) -> None:
        self.timer = None
        if self.state == _BODY:
            self._fail(head_timeout())


def _no_delay(listening: socket.socket) -> None:
    """Turn Nagle off: the head and each chunk are small writes, and Nagle would hold the second one
    back until the client's delayed ACK (40 ms). Set once on the listening socket: on Linux every
    accepted socket inherits it, which saves a socket wrapper and a syscall per connection."""
    if listening.family in (socket.AF_INET, socket.AF_INET6):
        listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _lane_request(upstream: Upstream, route: Route, body: bytes) -> bytes:
    """llama-server's request, built from scratch: nothing of the client's head travels but the route."""
    try:
        authorization = upstream.authorization()
    except RuntimeError:
        raise UpstreamUnavailable() from None
    headers: list[Header] = [(b"Host", upstream.host_header)]
    if authorization:  # an attached llama-server may run without a key
        headers.append((b"Authorization", authorization))
    if route.kind == "chat":
        headers.append((b"Content-Type", b"application/json"))
        if route.conversation_id is not None:
            headers.append((b"X-Conversation-Id", route.conversation_id.encode("ascii")))
    if body or route.method == "POST":
        headers.append((b"Content-Length", str(len(body)).encode()))
    headers.append((b"Connection", b"close"))
    return request_head(route.method.encode("ascii"), route.upstream_target.encode("ascii"), headers)


_RESPONSE_DROPPED = HOP_BY_HOP - {b"transfer-encoding"}


class Relay(asyncio.Protocol):
    """One upstream connection: rewrites the response head, then passes body bytes through as read.

    `parser` sees every byte only to notice the end of the message: llhttp in C, with no `on_body`,
    so no Python call per chunk. The client gets the upstream framing as it is, so every byte after
    the head is the upstream's byte.
    """

    __slots__ = (
        "client",
        "complete",
        "cors",
        "head",
        "head_only",
        "headers",
        "parser",
        "reason",
        "strip_cors",
        "timer",
        "transport",
        "until_eof",
    )

    def __init__(self, client: ClientConnection, cors: str | None, *, strip_cors: bool, head_only: bool) -> None:
        self.client: ClientConnection | None = client
        self.cors = cors
        self.strip_cors = strip_cors
        self.head_only = head_only
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.head: bytearray | None = bytearray()
        self.headers: list[Header] | None = []
        self.reason = b""
        self.complete = False
        self.until_eof = False
        self.timer: asyncio.TimerHandle | None = None
        self.parser = httptools.HttpResponseParser(self)

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
        self.transport = transport  # type: ignore[assignment]

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
        client.transport.write(data)
        if self.complete:
            self._done(client)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        if client is None:
            return
        self.client = None
        self._cancel_timer()
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
        self.transport.abort()

    def pause(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    # internals

    def _head_received(self, client: ClientConnection, data: bytes) -> None:
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
        if status < 200:
            self._fail(UpstreamUnavailable())
            return
        client.relay_head(self._client_head(client, status, headers))
        if self.head_only or status in (204, 304):
            self._done(client)
        elif end < len(raw):
            self.data_received(raw[end:])
        elif self.complete:
            self._done(client)

    def _client_head(self, client: ClientConnection, status: int, headers: list[Header]) -> bytes:
        """The upstream head, minus hop-by-hop headers and llama-server's any-origin CORS."""
        framed = any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)
        self.until_eof = not framed and not self.head_only and status not in (204, 304)
        dechunk = client.http10
        kept = [
            (name, value)
            for name, value in headers
            if name.lower() not in _RESPONSE_DROPPED
            and not (self.strip_cors and name.lower().startswith(b"access-control-"))
            and not (dechunk and name.lower() == b"transfer-encoding")
        ]
        if self.cors is not None:
            kept.extend(cors_headers(self.cors))
        if self.until_eof or client.close_after:
            kept.append((b"Connection", b"close"))
        return response_head(status, self.reason or b"OK", kept)

    def _done(self, client: ClientConnection) -> None:
        self.client = None
        self._cancel_timer()
        self.transport.abort()
        client.relay_done(close=self.until_eof)

    def _fail(self, refusal: Refusal) -> None:
        client, self.client = self.client, None
        self._cancel_timer()
        self.transport.abort()
        if client is not None:
            client.relay_failed(refusal)

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

    def on_body(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            client.transport.write(data)

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
        if self.complete:
            self._done(client)


class GateServer:
    """The gate's listeners and background pulls, started and stopped as one."""

    def __init__(
        self,
        config: GateConfig,
        upstream: Upstream,
        *,
        keyset: KeySet | None = None,
        started_at: float | None = None,
    ) -> None:
        self.config = config
        self.keyset = keyset or KeySet(config.control_socket, interval=config.keyset_interval)
        self.gate = Gate(config, upstream, self.keyset, started_at=started_at)
        self._servers: list[asyncio.AbstractServer] = []
        self._closed = False
        self._stop_pulling = asyncio.Event()
        self._puller: asyncio.Task[None] | None = None

    async def start(self, public_sock: socket.socket | None, app_sock: socket.socket | None = None) -> None:
        """``app_sock`` is two-port mode's app port: the broker relay alone, while ``public_sock`` is the lane."""
        config = self.config
        await self.keyset.refresh()
        self._puller = asyncio.ensure_future(self.keyset.run(self._stop_pulling))
        loop = asyncio.get_running_loop()
        for listening in (public_sock, app_sock):
            if listening is not None:
                _no_delay(listening)
        if public_sock is not None:
            listener = Listener(lane=True, broker=not config.two_port, cors=config.two_port, tls=config.tls)
            self._servers.append(
                await loop.create_server(
                    lambda: ClientConnection(self.gate, listener),
                    sock=public_sock,
                    ssl=_server_tls(config),
                    ssl_handshake_timeout=config.head_timeout if config.tls else None,
                )
            )
        if app_sock is not None:
            app = Listener(lane=False, broker=True, tls=config.tls)
            self._servers.append(
                await loop.create_server(
                    lambda: ClientConnection(self.gate, app),
                    sock=app_sock,
                    ssl=_server_tls(config),
                    ssl_handshake_timeout=config.head_timeout if config.tls else None,
                )
            )
        private = Listener(lane=True, health=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.private_socket)
        server = await loop.create_unix_server(lambda: ClientConnection(self.gate, private), config.private_socket)
        os.chmod(config.private_socket, 0o600)
        self._servers.append(server)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        for connection in list(self.gate.connections):
            connection.shutdown()
        self._stop_pulling.set()
        if self._puller is not None:
            await self._puller
        await self.keyset.aclose()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.private_socket)


def _server_tls(config: GateConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def serve_gate(
    config: GateConfig,
    upstream: Upstream,
    public_sock: socket.socket | None,
    stop: asyncio.Event,
    app_sock: socket.socket | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Serve until `stop` is set, then close the listeners and every live connection.

    `started` is called once every listener is up, so a caller never mistakes a gate that failed
    to bind (a bad TLS pair, say) for one that serves.
    """
    server = GateServer(config, upstream)
    await server.start(public_sock, app_sock)
    log.info("gate serving two_port=%s tls=%s", config.two_port, config.tls)
    if started is not None:
        started()
    try:
        await stop.wait()
    finally:
        await server.close()
