"""Fakes for the gate's tests: llama-server, the broker's two sockets, and a raw HTTP client.

The fake llama-server writes llama-server 11434's exact bytes, recorded from the real binary
(`../shared/LLAMA-SERVER.md`): the head below, then one chunk per SSE event, then `0\\r\\n\\r\\n`,
then it closes (the gate always sends `Connection: close`). It records every request it receives,
so a test can assert that a refused request never reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import httptools

from broker.signing_keys import SigningKey
from llama_direct.control import KNOWN_PARAMETER, STATE_PATH, USAGE_PATH, state_document
from llama_direct.replay import Revocations
from llama_direct.tokens import Grant, mint
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.keyset import KeySet
from llama_launcher.gate.proxy import GateServer


@dataclass
class StaticUpstream:
    """A llama-server at a fixed address with a fixed key: what the gate's `Upstream` needs, for tests."""

    address: str | tuple[str, int]
    key: str | None = field(repr=False)
    ssl: ssl.SSLContext | None = None
    host_header: bytes = b"llama-server"
    ready: bool = True

    def authorization(self) -> bytes:
        """`b"Bearer <key>"`, or nothing for a llama-server that runs without a key."""
        return b"Bearer " + self.key.encode("ascii") if self.key else b""

    def is_ready(self) -> bool:
        return self.ready

MASTER_KEY = "master-key-for-tests-0123456789abcdef"
AUDIENCE = "gate-test"
ISSUER = "broker-test"
MODEL = "smollm2"

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nAccess-Control-Allow-Origin: *\r\nX-Accel-Buffering: no\r\n"
    b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
)


def sse_event(n: int) -> bytes:
    chunk = {
        "choices": [{"finish_reason": None, "index": 0, "delta": {"content": f" w{n}"}}],
        "created": 1795629104,
        "id": "chatcmpl-zkG8EICaFc4BY6WN0diK4gbQJgy644f3",
        "model": MODEL,
        "system_fingerprint": "b0-unknown",
        "object": "chat.completion.chunk",
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def sse_body(events: int) -> bytes:
    """The chunked body of a stream of `events` deltas and `[DONE]`, exactly as llama-server frames it."""
    return b"".join(chunk(sse_event(n)) for n in range(events)) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    connection: int

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


Handler = Callable[[Received, asyncio.StreamWriter], Awaitable[None]]


class FakeServer:
    """An HTTP/1.1 unix-socket server for tests: h11 reads each request, `handler` writes raw bytes."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[Received] = []
        self.connections = 0
        self.closed_at: list[float] = []
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path)

    async def stop(self) -> None:
        """Close the listener and end every connection still being served (a handler held by a test's
        `forever` stream included), so no coroutine outlives the test's event loop."""
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        conn.receive_data(data)
                        if not data:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                received = Received(
                    request.method.decode(), request.target.decode(), list(request.headers.raw_items()), body, number
                )
                self.requests.append(received)
                await self.handler(received, writer)
                await writer.drain()
                if writer.is_closing():
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            self.closed_at.append(time.monotonic())
            writer.close()


@dataclass
class LlamaBehaviour:
    """What the fake llama-server does with a chat request; tests change it."""

    events: int = 5
    delay: float = 0.0
    forever: bool = False
    die_after: int | None = None
    slots_busy: int = 0
    vision: bool = False
    n_ctx: int = 512
    silent: bool = False
    chunk_bytes: int = 0
    status: int = 200
    """Anything else: chats are answered with this status and llama-server's error shape."""
    name: str = "smollm2"
    """The one model `/v1/models` lists."""
    usage: dict[str, int] | None = None
    """Set: a last event with this `usage` before `[DONE]`, as with `stream_options.include_usage`."""


async def llama_handler(behaviour: LlamaBehaviour, received: Received, writer: asyncio.StreamWriter) -> None:
    if received.target == "/health":
        writer.write(_json_response(200, {"status": "ok"}))
        return
    if received.target == "/slots":
        slots = [{"id": n, "is_processing": n < behaviour.slots_busy} for n in range(4)]
        writer.write(_json_response(200, slots))
        return
    if received.target == "/v1/models":
        writer.write(_json_response(200, {"object": "list", "data": [{"id": behaviour.name}]}))
        return
    if behaviour.status != 200:
        error = {"error": {"code": behaviour.status, "message": "Loading model", "type": "unavailable_error"}}
        writer.write(_json_response(behaviour.status, error))
        return
    if received.target == "/props":
        props = {"modalities": {"vision": behaviour.vision}, "default_generation_settings": {"n_ctx": behaviour.n_ctx}}
        writer.write(_json_response(200, props))
        return
    if behaviour.silent:
        await asyncio.sleep(3600)
    writer.write(SSE_HEAD)
    if behaviour.chunk_bytes:
        big = chunk(b"data: " + b"x" * behaviour.chunk_bytes + b"\n\n")
        while True:
            writer.write(big)
            await writer.drain()
    n = 0
    while behaviour.forever or n < behaviour.events:
        if behaviour.die_after is not None and n == behaviour.die_after:
            writer.transport.abort()
            return
        writer.write(chunk(sse_event(n)))
        await writer.drain()
        n += 1
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
    if behaviour.usage is not None:
        writer.write(chunk(b"data: " + json.dumps({"choices": [], "usage": behaviour.usage}).encode() + b"\n\n"))
    writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    writer.close()


def _json_response(status: int, value: Any, headers: bytes = b"") -> bytes:
    body = json.dumps(value).encode()
    return (
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (status, len(body))
        + headers + b"\r\n" + body
    )


async def broker_handler(received: Received, writer: asyncio.StreamWriter) -> None:
    """Echoes what it received; `/login` answers like the broker's login (303 and a cookie)."""
    if received.target.startswith("/login"):
        writer.write(
            b"HTTP/1.1 303 See Other\r\nLocation: ./\r\nSet-Cookie: session=abc; HttpOnly; SameSite=Strict\r\n"
            b"Set-Cookie: other=1\r\nReferrer-Policy: no-referrer\r\nContent-Length: 0\r\n\r\n"
        )
        return
    if received.target == "/sse":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(sse_body(3))
        return
    echo = {
        "method": received.method,
        "target": received.target,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in received.headers],
        "body": received.body.decode("latin-1"),
    }
    writer.write(_json_response(200, echo))


@dataclass
class Harness:
    """A running gate with a fake llama-server, a fake broker and a fake control socket."""

    dir: str
    key: SigningKey
    config: GateConfig
    server: GateServer
    llama: FakeServer
    broker: FakeServer
    control: FakeServer
    behaviour: LlamaBehaviour
    port: int | None
    jwks: dict[str, Any]
    revocations: Revocations = field(default_factory=Revocations)
    fleet: list[tuple[FakeServer, LlamaBehaviour]] = field(default_factory=list)
    """With `upstreams=N`: every fake llama-server, the first being `llama`."""
    usage: list[dict[str, Any]] = field(default_factory=list)
    """The usage reports the gate posted to the control socket (`USAGE_PATH`)."""
    usage_status: int = 204
    """What the fake broker answers them (each is kept whatever it answers)."""

    @property
    def upstream_requests(self) -> list[Received]:
        """What reached the fake llama-server, apart from the gate's own /health, /slots, /props."""
        return [r for r in self.llama.requests if r.target not in ("/health", "/slots", "/props")]

    def token(
        self,
        *,
        scope: str = "chat",
        routes: tuple[tuple[str, str], ...] = (("POST", "/v1/chat/completions"),),
        origin: str | None = None,
        conversation_id: str | None = None,
        uses: int = 1,
        now: float | None = None,
        ttl: int = 30,
        key: SigningKey | None = None,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        subject: str = "alice",
        streams: int | None = None,
    ) -> str:
        grant = Grant(
            routes=routes, model=MODEL, max_tokens=64, uses=uses, origin=origin, conversation_id=conversation_id,
            streams=streams,
        )
        return mint(
            key or self.key,
            issuer=issuer,
            audience=audience,
            subject=subject,
            scope=scope,
            grant=grant,
            now=time.time() if now is None else now,
            ttl=ttl,
        ).token


def state_of(harness: Harness) -> dict[str, Any]:
    return state_document(harness.jwks, harness.revocations.to_dict())


async def control_handler(harness_ref: list[Harness], received: Received, writer: asyncio.StreamWriter,
                          hold: float = 0.5) -> None:
    """The broker's `GET /state`: held (polled every 10 ms) while `known` is current, then 304; its
    `POST /usage`: each report of the body kept, 204."""
    harness = harness_ref[0]
    path, _, query = received.target.partition("?")
    if (received.method, path) == ("POST", USAGE_PATH):
        harness.usage.extend(json.loads(received.body)["reports"])
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % harness.usage_status)
        return
    if path != STATE_PATH:
        writer.write(_json_response(404, {}))
        return
    known = urllib.parse.parse_qs(query).get(KNOWN_PARAMETER, [""])[0]
    deadline = time.monotonic() + hold
    while state_of(harness)["version"] == known and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    document = state_of(harness)
    if document["version"] == known:
        writer.write(b"HTTP/1.1 304 Not Modified\r\n\r\n")
    else:
        writer.write(_json_response(200, document))


@contextlib.asynccontextmanager
async def running_gate(*, public: bool = True, upstreams: int = 1, **settings: Any) -> AsyncIterator[Harness]:
    """A gate on loopback and unix sockets in a fresh short temp dir; everything stops on exit.

    `upstreams`: more than one runs that many fake llama-servers behind the gate, as a fleet."""
    base = tempfile.mkdtemp(prefix="gt-", dir="/tmp")
    key = SigningKey.generate("EdDSA")
    behaviour = LlamaBehaviour()
    ref: list[Harness] = []
    llama = FakeServer(os.path.join(base, "llama.sock"), lambda r, w: llama_handler(behaviour, r, w))
    broker = FakeServer(os.path.join(base, "broker.sock"), broker_handler)
    control = FakeServer(os.path.join(base, "control.sock"), lambda r, w: control_handler(ref, r, w))
    values: dict[str, Any] = {
        "audience": AUDIENCE,
        "issuer": ISSUER,
        "broker_socket": broker.path,
        "control_socket": control.path,
        "private_socket": os.path.join(base, "gate.sock"),
        "model": MODEL,
        "head_timeout": 1.0,
        "keyset_interval": 60.0,
    }
    values.update(settings)
    config = GateConfig.from_dict(values)
    public_sock: socket.socket | None = None
    port = None
    if public:
        public_sock = socket.socket()
        public_sock.bind(("127.0.0.1", 0))
        public_sock.listen(128)
        port = public_sock.getsockname()[1]
    fleet = [(llama, behaviour)]
    for n in range(1, upstreams):
        more = LlamaBehaviour()
        fleet.append((FakeServer(os.path.join(base, f"llama{n}.sock"),
                                 lambda r, w, b=more: llama_handler(b, r, w)), more))  # type: ignore[misc]
    doors = [(fake.path, StaticUpstream(fake.path, key=MASTER_KEY)) for fake, _ in fleet]
    # Started a second ago: the cut-off rounds up to the next whole second, and tests mint at once.
    server = GateServer(config, doors if upstreams > 1 else doors[0][1],
                        keyset=KeySet.for_config(config), started_at=time.time() - 1)
    harness = Harness(
        base, key, config, server, llama, broker, control, behaviour, port, {"keys": [dict(key.public_jwk)]},
        fleet=fleet,
    )
    ref.append(harness)
    for fake in (*[f for f, _ in fleet], broker, control):
        await fake.start()
    await server.start(public_sock)
    try:
        yield harness
    finally:
        await server.close()
        for fake in (*[f for f, _ in fleet], broker, control):
            await fake.stop()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_body: bytes
    """The bytes after the head exactly as they came, framing included."""

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]

    def json(self) -> Any:
        return json.loads(self.body)


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.complete = False
        self.head_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


class Client:
    """A raw client connection: sends exact bytes, reads one response at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending = b""

    @classmethod
    async def open(cls, where: int | str) -> Client:
        if isinstance(where, int):
            reader, writer = await asyncio.open_connection("127.0.0.1", where)
        else:
            reader, writer = await asyncio.open_unix_connection(where)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, head_request: bool = False, timeout: float = 5.0) -> Response:
        """One whole response; for an HTTP/1.0 close-delimited body, everything up to EOF."""
        state = _Parsed()
        parser = httptools.HttpResponseParser(state)
        data = self.pending
        raw = bytearray()
        head_end = -1
        async with asyncio.timeout(timeout):
            while not (state.complete or (head_request and state.head_done)):
                if not data:
                    data = await self.reader.read(65536)
                    if not data:
                        if head_end < 0:
                            raise ConnectionError("closed before a response head")
                        break
                # One byte at a time, so that the bytes of a pipelined next response stay unread.
                used = 0
                while used < len(data) and not (state.complete or (head_request and state.head_done)):
                    parser.feed_data(data[used : used + 1])
                    used += 1
                raw += data[:used]
                data = data[used:]
                if head_end < 0 and b"\r\n\r\n" in raw:
                    head_end = raw.index(b"\r\n\r\n") + 4
        self.pending = data
        return Response(parser.get_status_code(), state.headers, bytes(state.body), bytes(raw[head_end:]))

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF) without sending more."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True
        finally:
            self.writer.close()

    def close(self) -> None:
        self.writer.close()


def chat_request(token: str | None, body: bytes | None = None, *, extra: bytes = b"", host: bytes = b"gate") -> bytes:
    body = body if body is not None else b'{"messages":[{"role":"user","content":"hi"}],"stream":true}'
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
    return (
        b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: " + host + b"\r\n" + auth
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )
