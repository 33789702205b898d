"""The request half's framing, sans I/O: bytes in, request events out, in the style of h11.

`ConnectionCore` holds what one client connection knows between reads: the bytes of a head still
arriving, the request being read, its body, and whether the connection may carry another request.
It has no socket, no asyncio and reads no clock: `ClientConnection` (the asyncio shell) feeds it
the bytes it reads (`receive`), acts on each event `next_event` returns, and tells it what the
rest of the gate decided (a refusal, an answer, a relay that ended, a timer that fired). So every
framing case (pipelining, a head split anywhere, an oversize head, a bad chunked body, keep-alive
or close) is a unit test of this module, without a server.

One request at a time: `HEAD` (reading a head), `BODY` (its body arriving), `BUSY` (read whole,
being answered; a next request's bytes wait, and past `PIPELINE_LIMIT` reading pauses), `CLOSED`.
The events of one head, in order: `Head` (the shell may still refuse it, e.g. an overloaded client
behind a proxy), then any refusal the head earns without a token, the body bytes that came with
it, then `Dispatch` (what serves it). Parsing is `request_reader`'s (httptools and the gate's own
strict checks); this module only says where each request begins and ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

from llama_direct.control import GATE_UNLOAD_PATH
from llama_direct.lanes import LANE_ROUTES
from llama_direct.metrics import METRICS_PATH
from llama_direct.refusals import (
    BAD_TARGET,
    BODY_TOO_LARGE,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    REQUEST_TIMEOUT,
    Overloaded,
    RateLimited,
    Refusal,
    RequestRefusal,
)
from llama_launcher.gate.http1 import Header, connection_tokens, cors_headers, find_head_end, simple_response
from llama_launcher.gate.request_reader import BodyReader, Request, read_head

PIPELINE_LIMIT = 64 * 1024
"""Bytes of a next request buffered while a response is still running; reading pauses beyond."""

BASELINES = frozenset((route.method.encode(), route.path.encode()) for route in LANE_ROUTES if route.body is not None)
"""The broker routes whose body may be large: the baseline of each lane route that takes a body (the
same route off the lane; images inline). The rest are small."""

HEAD, BODY, BUSY, CLOSED = range(4)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
METRICS_TARGET = METRICS_PATH.encode()


class Need(Enum):
    """The events that carry nothing: wait for bytes, or stop reading for now."""

    DATA = "need_data"
    """Nothing more to do until `receive` is given bytes (or the shell's answer moves the state on)."""
    PAUSE = "pause"
    """A next request's bytes passed `PIPELINE_LIMIT` while this one is answered: pause reading."""


NEED_DATA: Final = Need.DATA
PAUSE: Final = Need.PAUSE


@dataclass(frozen=True, slots=True)
class Head:
    """A request head, parsed: the shell may refuse it before its checks and body are read."""

    request: Request


@dataclass(frozen=True, slots=True)
class Data:
    """Body bytes (de-chunked), given only once the shell asked to `pour` them: else they are kept."""

    piece: bytes


@dataclass(frozen=True, slots=True)
class BodyEnd:
    """The body is whole: what follows it waits in the buffer for the next request."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """The request earns `refusal` (`close`: the connection ends after it, whatever it asked)."""

    refusal: Refusal
    close: bool


Kind = Literal["lane", "preflight", "private", "metrics", "broker"]
PRIVATE_ROUTES = frozenset({(b"GET", b"/health"), (b"HEAD", b"/health"), (b"POST", GATE_UNLOAD_PATH.encode())})
"""What the gate answers itself on its private socket: its health, and the broker's unload (`gate.unload`)."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What serves the request (its body may still be arriving: `ConnectionCore.state == BODY`)."""

    kind: Kind
    request: Request


Event = Need | Head | Data | BodyEnd | Refuse | Dispatch


@dataclass(frozen=True, slots=True)
class Reply:
    """What to write (maybe nothing) and whether the connection ends after it."""

    data: bytes
    close: bool


@dataclass(frozen=True, slots=True)
class Rules:
    """What one listener serves and the body limits: all the core needs of the gate's settings."""

    lane: bool
    cors: bool
    health: bool
    broker: bool
    lane_prefix: bytes
    """The lane's path prefix with its trailing slash (`/direct/`)."""
    max_body_bytes: int
    max_small_body_bytes: int
    allowed_origins: frozenset[str]
    metrics: bool = False
    """`GET /metrics` is the gate's own (`llama_direct.metrics`), never relayed to the broker."""


class ConnectionCore:
    """One client connection's framing state: see the module docstring."""

    __slots__ = ("body", "body_limit", "buf", "close_after", "events", "http10", "incoming", "origin", "paused",
                 "pouring", "reader", "received", "request", "rest", "rules", "scanned", "sent_head", "state")

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.state = HEAD
        self.buf = bytearray()
        """A head still arriving, or (`BUSY`) the next request's bytes."""
        self.scanned = 0
        self.incoming = b""
        """Body bytes received and not yet fed to the reader."""
        self.events: deque[Event] = deque()
        self.request: Request | None = None
        self.rest: bytes | None = None
        """The bytes after a head the shell has not let through its `Head` yet."""
        self.reader: BodyReader | None = None
        self.body = bytearray()
        self.body_limit = rules.max_body_bytes
        self.received = 0
        self.pouring = False
        self.http10 = False
        self.close_after = False
        self.origin: str | None = None
        self.sent_head = False
        self.paused = False

    # -- bytes in, events out --------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes read from the client; `next_event` says what they mean."""
        state = self.state
        if state == BODY:
            if self.rest is None:
                self.incoming += data
            else:
                self.rest += data
        elif state != CLOSED:
            self.buf += data

    def next_event(self) -> Event:
        """The next thing the shell must act on; `NEED_DATA` when there is none."""
        if self.events:
            return self.events.popleft()
        state = self.state
        if state == HEAD:
            return self._read_head()
        if state == BODY:
            if self.rest is not None:
                self._check_head()
            elif self.incoming:
                data, self.incoming = self.incoming, b""
                self._feed(data)
            return self.events.popleft() if self.events else NEED_DATA
        if state == BUSY and len(self.buf) > PIPELINE_LIMIT and not self.paused:
            self.paused = True
            return PAUSE
        return NEED_DATA

    def _read_head(self) -> Event:
        buf = self.buf
        while not self.scanned and buf.startswith(b"\r\n"):  # RFC 9112 2.2: stray CRLFs between requests
            del buf[:2]
        try:
            end = find_head_end(buf, self.scanned)
            if end < 0:
                self.scanned = len(buf)
                return NEED_DATA
            request = read_head(bytes(buf[:end]))
        except Refusal as refusal:
            return Refuse(refusal, close=True)
        self.rest = bytes(buf[end:])
        buf.clear()
        self.scanned = 0
        self.request = request
        self.http10 = request.http_version == b"1.0"
        self.close_after = self.http10 or b"close" in connection_tokens(request.headers)
        self.origin = next((v.decode("latin-1") for n, v in request.headers if n == b"origin"), None)
        self.state = BODY
        self.body = bytearray()
        self.received = 0
        return Head(request)

    def _check_head(self) -> None:
        """The refusals a head earns without a token, its body so far, then what serves it."""
        request, rest, rules = self.request, self.rest, self.rules
        assert request is not None and rest is not None
        self.rest = None
        target = request.target
        if request.method == b"CONNECT":
            self.events.append(Refuse(RequestRefusal(METHOD_NOT_ALLOWED, "connect"), close=True))
            return
        if not target.startswith(b"/"):
            self.events.append(Refuse(RequestRefusal(BAD_TARGET), close=True))
            return
        on_lane = rules.lane and target.startswith(rules.lane_prefix)
        large = on_lane or (request.method, target.partition(b"?")[0]) in BASELINES
        self.body_limit = rules.max_body_bytes if large else rules.max_small_body_bytes
        if request.length is not None and request.length > self.body_limit:
            self.events.append(Refuse(RequestRefusal(BODY_TOO_LARGE), close=True))
            return
        self.reader = BodyReader(request)
        if not self._feed(rest):
            return
        if on_lane:
            kind: Kind = "preflight" if rules.cors and request.method == b"OPTIONS" else "lane"
        elif rules.health and (request.method, target) in PRIVATE_ROUTES:
            kind = "private"
        elif rules.metrics and target == METRICS_TARGET and request.method in (b"GET", b"HEAD"):
            kind = "metrics"
        elif rules.broker:
            kind = "broker"
        else:
            self.events.append(Refuse(RequestRefusal(NOT_FOUND), close=False))
            return
        self.events.append(Dispatch(kind, request))

    def _feed(self, data: bytes) -> bool:
        """Read body bytes; False once the body is refused (the events say why)."""
        reader = self.reader
        assert reader is not None
        try:
            piece = reader.feed(data)
        except RequestRefusal as refusal:
            self.events.append(Refuse(refusal, close=True))
            return False
        if piece:
            self.received += len(piece)
            if self.received > self.body_limit:
                self.events.append(Refuse(RequestRefusal(BODY_TOO_LARGE), close=True))
                return False
            if self.pouring:
                self.events.append(Data(piece))
            else:
                self.body += piece
        if reader.done:
            self.buf = bytearray(reader.trailing)
            self.reader = None
            self.state = BUSY
            self.events.append(BodyEnd())
        return True

    # -- what the shell tells it -----------------------------------------------------------

    @property
    def expects_continue(self) -> bool:
        """Whether a `100 Continue` is owed now: asked for, and no body byte has come yet."""
        return self.reader is not None and self.reader.expects_continue

    def take_body(self) -> bytes:
        """The body read so far, released here: a held stream must not keep a 20 MB upload alive."""
        body, self.body = bytes(self.body), bytearray()
        return body

    def pour(self) -> None:
        """From now on this body's bytes come out as `Data` events, not kept (relayed as they arrive)."""
        self.pouring = True

    def closing(self) -> bool:
        """Whether an answer now ends the connection: asked for, HTTP/1.0, or a body left unread."""
        return self.close_after or self.state == BODY

    def refuse(self, refusal: Refusal, *, close: bool = False) -> Reply | None:
        """The response that answers `refusal` (with CORS for an allowed origin, `Retry-After` where it
        has one); only a close once a response head went out; None once closed."""
        if self.state == CLOSED:
            return None
        if self.sent_head:
            return Reply(b"", close=True)
        headers: list[Header] = [(name.encode(), value.encode()) for name, value in refusal.headers]
        if self.rules.cors and self.origin in self.rules.allowed_origins:
            headers += cors_headers(self.origin)
        if isinstance(refusal, (Overloaded, RateLimited)):
            headers.append((b"Retry-After", str(refusal.retry_after).encode()))
        close = close or self.closing()
        return Reply(simple_response(refusal.status, refusal.to_body(), headers, close=close), close)

    def answer(self, response: bytes) -> Reply:
        """A whole response the gate made itself (built with `close=closing()`)."""
        return Reply(response, self.closing())

    def head_sent(self) -> None:
        """The relay wrote the response head: from here a failure can only cut the connection."""
        self.sent_head = True

    def finished(self, *, close: bool) -> bool:
        """A relayed response ended (`close`: the upstream's framing asks it); whether to close now."""
        return close or self.close_after or self.state == BODY  # answered before its body ended

    def next_request(self) -> bool:
        """Ready for the next head; True where reading was paused and must resume."""
        self.state = HEAD
        self.sent_head = False
        self.origin = None
        self.body = bytearray()
        self.pouring = False
        resume, self.paused = self.paused, False
        return resume

    def close(self) -> bool:
        """The connection ends; False where it had already."""
        if self.state == CLOSED:
            return False
        self.state = CLOSED
        self.events.clear()
        return True

    def head_timeout(self) -> Refuse | bool:
        """The head deadline passed: 408 for a head begun; True: close silently (an idle kept-alive
        connection); False: no head is awaited any more."""
        if self.state != HEAD:
            return False
        return Refuse(RequestRefusal(REQUEST_TIMEOUT), close=True) if self.buf else True

    def body_timeout(self) -> Refuse | None:
        """The body deadline passed: 408 if it is still arriving."""
        return Refuse(RequestRefusal(REQUEST_TIMEOUT), close=True) if self.state == BODY else None
