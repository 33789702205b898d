"""The request half's asyncio shell: one client connection, its requests read and answered one at a time.

What the bytes mean is `connection_core`'s (sans I/O); where a lane request goes is `lane_plan`'s.
This shell holds the rest: the transport, the timers, the admission counts, the task that checks a
request (the token, the scope, one use of the token), and the wiring of the `relay.Relay` that
carries the answer back.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from llama_direct.metrics import metrics_token_matches
from llama_direct.refusals import (
    INVALID_TOKEN,
    ORIGIN_REQUIRED,
    BrokerUnavailable,
    MissingToken,
    Overloaded,
    Refusal,
    RequestRefusal,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llama_launcher.gate.admission import forwarded_client, forwarded_user
from llama_launcher.gate.config import Listener
from llama_launcher.gate.connection_core import (
    BODY,
    CLOSED,
    CONTINUE,
    HEAD,
    NEED_DATA,
    BodyEnd,
    ConnectionCore,
    Data,
    Dispatch,
    Event,
    Head,
    Refuse,
    Reply,
    Rules,
)
from llama_launcher.gate.core import Gate
from llama_launcher.gate.http1 import chunk, simple_response
from llama_launcher.gate.lane_plan import LanePlan, plan_lane
from llama_launcher.gate.linger import close_in_halves
from llama_launcher.gate.metrics import BASELINE, CLIENT_LEFT, DIRECT
from llama_launcher.gate.outgoing import broker_request
from llama_launcher.gate.pool import Member
from llama_launcher.gate.relay import DechunkingRelay, Relay
from llama_launcher.gate.request_reader import Request
from llama_launcher.gate.scope import RequestHead, allowed_preflight, check_request
from llama_launcher.gate.stream_ledger import Stream
from llama_launcher.gate.stream_watch import reset_on_close
from llama_launcher.gate.unload import unload
from llama_launcher.gate.upstream import connect, connect_upstream
from llama_launcher.gate.usage_reports import Metered

log = logging.getLogger(__name__)

Opened = tuple[tuple[asyncio.Transport, Relay], Callable[[], bytes]]
"""A connected relay and what to send it: built last, since building it may still refuse (no upstream key yet)."""


def rules_for(gate: Gate, listener: Listener) -> Rules:
    """What the core of a connection on `listener` needs of the gate's settings."""
    config = gate.config
    return Rules(lane=listener.lane, cors=listener.cors, health=listener.health, broker=listener.broker,
                 metrics=listener.metrics,
                 lane_prefix=gate.lane_prefix, max_body_bytes=config.max_body_bytes,
                 max_small_body_bytes=config.max_small_body_bytes, allowed_origins=gate.allowed_origins)


class ClientConnection(asyncio.Protocol):
    """One client connection: feeds its bytes to a `ConnectionCore`, and writes what answers them."""

    __slots__ = ("body_waiter", "chunked_sink", "client", "core", "counted", "flying", "gate", "lane", "listener",
                 "metered", "peer", "relay", "sink", "stalled", "started", "status", "stream", "task", "timer",
                 "transport", "usage", "write_paused")

    def __init__(self, gate: Gate, listener: Listener, rules: Rules) -> None:
        self.gate = gate
        self.listener = listener
        self.core = ConnectionCore(rules)  # `rules_for(gate, listener)`, made once a listener, not a connection
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made, before any other callback; no None check on the hot path
        self.peer: str | None = None
        self.body_waiter: asyncio.Future[bytes] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.relay: Relay | None = None
        self.write_paused = self.flying = False
        self.client: str | None = None
        self.counted: str | None = None
        self.sink: asyncio.Transport | None = None
        self.chunked_sink = False
        self.stream: Stream[Member] | None = None
        self.stalled: asyncio.TimerHandle | None = None
        self.lane = BASELINE if listener.health else DIRECT
        """The metrics' lane: the private socket serves the broker's baseline, a public port the direct lane."""
        self.metered: str | None = None
        """The lane route (metrics' label) of the request being answered, until it is counted."""
        self.started, self.status = 0.0, CLIENT_LEFT
        self.usage: Metered | None = None
        """The generating request being answered, until its usage is reported (`usage_reports`)."""

    @property
    def http10(self) -> bool:
        """The request is HTTP/1.0: its answer goes back close-delimited (`relay.RelayClient`)."""
        return self.core.http10

    @property
    def close_after(self) -> bool:
        """The connection ends after this answer, as the client asked (`relay.RelayClient`)."""
        return self.core.close_after

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
        self.core.close()
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
        core = self.core
        if core.state == HEAD and self.counted is None and self.peer is not None:
            self._count(True)  # a kept-alive connection's next head has begun
        core.receive(data)
        self._process()

    def eof_received(self) -> bool:
        """A client that stops sending is gone: browsers never half-close a request."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.close()
        self._usage_end(self.relay, complete=False)
        self._metered_end(self.status)
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

    # -- the core's events -----------------------------------------------------------------

    def _process(self) -> None:
        """Act on the core's events until it needs bytes, or one hands the request on."""
        core = self.core
        while (event := core.next_event()) is not NEED_DATA and self._on_event(event):
            pass

    def _on_event(self, event: Event) -> bool:
        """Act on one event; True to read the next one now."""
        if isinstance(event, Data):
            self._pour(event.piece)
            return True
        if isinstance(event, BodyEnd):
            self._body_end()
            return True
        if isinstance(event, Head):
            return self._on_head(event.request)
        if isinstance(event, Dispatch):
            self._dispatch(event)
        elif isinstance(event, Refuse):
            self._fail(event.refusal, close=event.close)
        else:  # PAUSE: a next request's bytes wait while this one is answered
            self.transport.pause_reading()
        return False

    def _on_head(self, request: Request) -> bool:
        """A head arrived: behind a trusted proxy, its client is who counts; False once refused."""
        self._cancel_timer()
        admission = self.gate.admission
        if self.peer is None or self.peer not in admission.trusted:
            self.client = self.peer
            return True
        self.client = forwarded_client(self.peer, [v for n, v in request.headers if n == b"x-forwarded-for"],
                                       admission.trusted)
        overloaded = admission.over(self.client)
        if overloaded is not None:
            self._refuse(overloaded, close=True)
            return False
        self._count(True)
        return True

    def _dispatch(self, event: Dispatch) -> None:
        """Start the task that answers the request; its body, if still arriving, has one deadline."""
        if self.core.state == BODY:  # one deadline for the whole body, never re-armed by a read
            self._arm(self.gate.config.body_timeout, self._on_body_timeout)
        request = event.request
        if event.kind == "lane":
            self.metered = self.gate.metrics.route_of(request.method, request.target)
            self.started, self.status = time.monotonic(), CLIENT_LEFT
            self._run(self._forward(self._open_lane(request)))
        elif event.kind == "preflight":
            self._run(self._serve_preflight(request))
        elif event.kind == "private":
            self._run(self._serve_private(request))
        elif event.kind == "metrics":
            self._run(self._serve_metrics(request))
        else:
            self._run(self._forward(self._open_broker(request)))

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.task = asyncio.get_running_loop().create_task(coroutine)

    def _body_end(self) -> None:
        if self.sink is not None and self.chunked_sink:
            self.sink.write(b"0\r\n\r\n")
        self.sink = None
        self._count(False)
        self._cancel_timer()
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self.core.take_body())

    async def _read_body(self) -> bytes:
        core = self.core
        if core.state != BODY:
            return core.take_body()
        if core.expects_continue:
            self.transport.write(CONTINUE)
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
        """Check the token (a use is spent there, first: metered from there), the route, the body; plan, connect."""
        gate = self.gate
        head = RequestHead(request.method.decode("ascii"), request.target, list(request.headers))
        claims, self.usage, granted = await gate.authorize(head, self.lane)
        route = check_request(head, claims, granted=granted)
        body = await self._read_body()
        self.stream = gate.streams.open(claims, route)
        plan = await plan_lane(gate, route, claims, body, cors=self.listener.cors)
        self.usage = self.usage or gate.usage.resume(claims, route)
        if route.lane.conversation == "stops":
            gate.streams.cancelled(route, plan.attempts.members)
        return await self._connect_lane(plan, functools.partial(self._relay, request, plan.cors, strip_cors=True))

    async def _connect_lane(self, plan: LanePlan, relay: Callable[[], Relay]) -> Opened:
        """Connect to the first upstream that takes the connection; with several, the relay may hand
        the request to the next one if this one fails before its head (`Relay.fallback`)."""
        pool, timeout, attempts = self.gate.pool, self.gate.config.connect_timeout, plan.attempts
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
                await pool.chosen(member, plan.route.lane, plan.route.conversation_id)
                opened.on_end = member.release
                opened.fallback = functools.partial(self._fall_back, member, plan, relay)
            return (transport, opened), functools.partial(plan.outgoing, member.upstream)

    def _fall_back(self, member: Member, plan: LanePlan, relay: Callable[[], Relay]) -> bool:
        """`member` failed before its head: hand the request to the next upstream, if one is left and
        the client is still waiting (False: the failure goes to the client as it is)."""
        member.failed()
        if self.core.state == CLOSED or self.core.sent_head or not plan.attempts.left():
            return False
        self.relay = None
        self._run(self._forward(self._connect_lane(plan, relay)))
        return True

    async def _open_broker(self, request: Request) -> Opened:
        """Connect to the broker. A large body is poured as it comes, never held whole (the broker refuses
        an anonymous upload from its head); one up to the small routes' cap goes with the head, since a write
        after a broker that answered from the head closed failed and lost the answer (502, not 401)."""
        length = request.length
        small = self.core.state != BODY or (length is not None and length <= self.gate.config.max_small_body_bytes)
        whole = await self._read_body() if small else None
        try:
            connected = await connect(
                self.gate.config.broker_socket,
                lambda: self._relay(request, None, strip_cors=False),
                timeout=self.gate.config.connect_timeout,
            )
        except (UpstreamUnavailable, UpstreamTimeout):
            raise BrokerUnavailable() from None
        return connected, lambda: self._broker_outgoing(request, connected[0], whole)

    async def _serve_private(self, request: Request) -> None:
        """The private socket's own routes (`connection_core.PRIVATE_ROUTES`): the health, the broker's unload."""
        if request.method == b"POST":
            status, body = await unload(self.gate.pool.members, await self._read_body()), b""
        else:
            status, body = 200, json.dumps(await self.gate.health_answer(), separators=(",", ":")).encode()
        response = simple_response(status, body, close=self.core.closing())
        self._answer(response[: len(response) - len(body)] if request.method == b"HEAD" else response)

    async def _serve_metrics(self, request: Request) -> None:
        """`/metrics` with the metrics token only (`llama_direct.metrics`); 401 without it, never open."""
        authorization = next((value for name, value in request.headers if name == b"authorization"), None)
        if not metrics_token_matches(authorization, self.gate.metrics_token):
            self._refuse(MissingToken() if authorization is None else RequestRefusal(INVALID_TOKEN))
            return
        body = await self.gate.metrics_exposition()
        response = simple_response(200, body, close=self.core.closing(), content_type=CONTENT_TYPE_LATEST.encode())
        self._answer(response[: len(response) - len(body)] if request.method == b"HEAD" else response)

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
            self._answer(simple_response(204, b"", answer, close=self.core.closing()))

    def _broker_outgoing(self, request: Request, transport: asyncio.Transport, whole: bytes | None) -> bytes:
        """The head and the `whole` body, or the head and what arrived (the rest is poured into `transport`)."""
        admission = self.gate.admission
        proto = b"https" if self.listener.tls else b"http"
        if self.peer in admission.trusted:
            proto = next((v for n, v in request.headers if n == b"x-forwarded-proto"), proto).split(b",")[0].strip()
        outgoing = functools.partial(
            broker_request, request, client=self.client, proto=proto, user_header=admission.user_header,
            user=forwarded_user(self.peer, admission.trusted, admission.user_header, request.headers))
        if whole is not None:
            return outgoing(length=len(whole)) + whole
        core = self.core
        body = core.take_body()
        length = request.length
        self.sink, self.chunked_sink = transport, length is None
        core.pour()
        head = outgoing(length=length, chunked=length is None)
        if core.expects_continue:
            self.transport.write(CONTINUE)
        return head + (chunk(body) if self.chunked_sink and body else body)

    def _pour(self, data: bytes) -> None:
        sink = self.sink
        assert sink is not None
        sink.write(chunk(data) if self.chunked_sink else data)

    def _relay(self, request: Request, cors: str | None, *, strip_cors: bool) -> Relay:
        factory = DechunkingRelay if self.core.http10 else Relay
        relay = factory(self, cors, strip_cors=strip_cors, head_only=request.method == b"HEAD")
        if self.usage is not None:
            relay.tail = self.usage.tail
        return relay

    def _hand_over(self, transport: asyncio.Transport, relay: Relay, data: bytes) -> None:
        """From here on the response half runs in callbacks: the task is done with this request."""
        self.relay = relay
        self.task = None
        if self.metered is not None and not self.flying:  # a fallback's second relay is the same stream
            self.flying = True
            self.gate.metrics.stream_began(self.lane)
        transport.write(data)
        relay.arm(self.gate.config.upstream_head_timeout)
        if self.write_paused:
            relay.pause()

    # -- responses and the connection's life ------------------------------------------------

    def _refuse(self, refusal: Refusal, *, close: bool = False) -> None:
        self._usage_end(None, complete=False)
        reply = self.core.refuse(refusal, close=close)
        if reply is None:
            return
        self.gate.metrics.refused(refusal.code)
        self._metered_end(refusal.status)
        if reply.data:
            log.debug("refused status=%d code=%s", refusal.status, refusal.code)
        self._reply(reply)

    def _fail(self, refusal: Refusal, *, close: bool = True) -> None:
        """The request cannot be read on: answer, and stop any work on it."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._refuse(refusal, close=close)

    def _answer(self, response: bytes) -> None:
        self._reply(self.core.answer(response))

    def _reply(self, reply: Reply) -> None:
        if reply.data:
            self.transport.write(reply.data)
            self.task = None
        if reply.close:
            self._close()
        else:
            self._next_request()

    def relay_head(self, head: bytes) -> None:
        self.core.head_sent()
        self.status = int(head[9:12])  # `http1.response_head`'s status line: b"HTTP/1.1 NNN ..."
        self.transport.write(head)

    def relay_body_began(self) -> None:
        if self.metered is not None:
            self.gate.metrics.first_byte(self.metered, self.lane, time.monotonic() - self.started)

    def relay_done(self, close: bool) -> None:
        self._usage_end(self.relay, complete=True)
        self._metered_end(self.status)
        self.relay = None
        self.sink = None
        if self.core.finished(close=close):
            self._close()
        else:
            self._next_request()

    def relay_failed(self, refusal: Refusal) -> None:
        """Upstream went away or timed out: an error before the head, a truncated stream after it."""
        self._usage_end(self.relay, complete=False)
        self.relay = None
        self.sink = None
        if self.core.sent_head:
            self._metered_end(self.status)
            self._close()
        else:
            self._refuse(refusal)

    def _usage_end(self, relay: Relay | None, *, complete: bool) -> None:
        """A generating request's answer ended (`complete`: its last byte relayed), or never began: its
        usage reported to the broker, off the request's path, and counted in the metrics."""
        metered, self.usage = self.usage, None
        if metered is None:
            return
        answered = relay is not None and relay.head is None
        status = relay.parser.get_status_code() if relay is not None and answered else None
        chunked = relay is not None and relay.chunked
        usage = self.gate.usage.end(metered, status=status, complete=complete, chunked=chunked)
        if usage is not None:
            self.gate.metrics.tokens(metered.model, metered.sub, usage.prompt_tokens or 0, usage.completion_tokens)

    def _metered_end(self, status: int) -> None:
        """A lane request's end, however it ended: counted once, with its duration if it was relayed."""
        route, self.metered = self.metered, None
        if route is None:
            return
        metrics = self.gate.metrics
        metrics.answered(route, self.lane, status)
        if self.flying:
            self.flying = False
            metrics.stream_ended(route, self.lane, time.monotonic() - self.started)

    def _next_request(self) -> None:
        resume = self.core.next_request()
        self._count(False)
        self._end_stream(finished=True)
        if self.peer in self.gate.admission.trusted:
            self.client = None  # a proxy's next request may be another client's
        if resume:
            self.transport.resume_reading()
        self._arm(self.gate.config.head_timeout, self._on_head_timeout)
        if self.core.buf:
            asyncio.get_running_loop().call_soon(self._continue)

    def _continue(self) -> None:
        if self.core.state == HEAD and self.core.buf:
            self._process()

    def _close(self) -> None:
        if self.core.close():
            self._cancel_timer()
            self._count(False)
            self.timer = close_in_halves(self.transport)

    def shutdown(self) -> None:
        """The gate is stopping: drop this connection and its upstream at once."""
        if self.task is not None:
            self.task.cancel()
        relay, self.relay = self.relay, None
        self._usage_end(relay, complete=False)
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
        decision = self.core.head_timeout()
        if isinstance(decision, Refuse):
            self._refuse(decision.refusal, close=True)
        elif decision:
            self._close()

    def _on_body_timeout(self) -> None:
        self.timer = None
        decision = self.core.body_timeout()
        if decision is not None:
            self._fail(decision.refusal)
