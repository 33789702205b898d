"""A synthetic llama-server on a unix socket: its exact stream format, at any rate, with no model.

GPUs serve small models at thousands of tokens per second, far beyond a 2-core CPU, so the
lane's per-chunk cost only shows against an upstream that is never the bottleneck. This one
writes precomputed chunks (`frames.StreamScript`), one socket write per event as llama-server
does, and answers the routes the gate asks: `/health` (no key), `/slots`, `/props`.

Pace: the process-wide default (`--tokens-per-second`, 0 = as fast as possible), or per request
through the OpenAI `user` field, `bench-pace:<tokens per second>`, which every lane forwards
untouched; so one upstream can serve slow held streams beside fast measured ones. The length is
the request's `max_tokens`. Like llama-server after a long stream, it closes the connection.

Run as `python -m llama_launcher.bench.synthetic --socket PATH`; the key is read from the
environment (`BENCH_UPSTREAM_KEY`), never argv. It stops on SIGTERM, or when its parent dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from typing import Any

import httptools

from llama_launcher.bench.frames import RESPONSE_HEAD, StreamScript

PACE_PREFIX = "bench-pace:"
BURST = 4
"""Events written back to back before yielding at full speed: other streams get their turn, as
llama-server's batch gives every slot one token per step."""
SLOTS = 64
MAX_BODY = 1024 * 1024


def pace_of(body: dict[str, Any], default: float) -> float:
    """Tokens per second asked through `user` (`bench-pace:N`), else the default; 0 means no pause."""
    user = body.get("user")
    if isinstance(user, str) and user.startswith(PACE_PREFIX):
        try:
            value = float(user[len(PACE_PREFIX) :])
        except ValueError:
            return default
        return max(value, 0.0)
    return default


def length_of(body: dict[str, Any]) -> int:
    for name in ("max_tokens", "max_completion_tokens", "n_predict"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return 16


def _json_response(status: int, value: object) -> bytes:
    body = json.dumps(value, separators=(",", ":")).encode()
    reason = {200: b"OK", 401: b"Unauthorized", 404: b"Not Found", 400: b"Bad Request"}[status]
    return (
        b"HTTP/1.1 %d %s\r\nServer: llama.cpp\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, reason, len(body), body)
    )


class Upstream:
    """State shared by the connections: the key, the default pace, and which streams run."""

    def __init__(self, key: str, pace: float) -> None:
        self.authorization = b"Bearer " + key.encode()
        self.pace = pace
        self.busy = 0

    def slots(self) -> list[dict[str, Any]]:
        return [{"id": i, "n_ctx": 4096, "speculative": False, "is_processing": i < self.busy} for i in range(SLOTS)]


class Connection(asyncio.Protocol):
    """One request, then close: parsed with httptools, answered, streamed."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.writable: asyncio.Event = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands stream protocols a Transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(_json_response(400, {"error": {"message": "bad request", "code": 400}}))

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            self._finish(_json_response(400, {"error": {"message": "too large", "code": 400}}))

    def on_message_complete(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if path == b"/health":
            self._finish(_json_response(200, {"status": "ok"}))
        elif self.headers.get(b"authorization") != self.upstream.authorization:
            error = {"message": "Invalid API Key", "type": "authentication_error", "code": 401}
            self._finish(_json_response(401, {"error": error}))
        elif path == b"/slots":
            self._finish(_json_response(200, self.upstream.slots()))
        elif path == b"/props":
            self._finish(_json_response(200, {"modalities": {"vision": False, "audio": False}, "total_slots": SLOTS}))
        elif method == b"POST" and path == b"/v1/chat/completions":
            try:
                body = json.loads(self.body)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                self._finish(_json_response(400, {"error": {"message": "bad json", "code": 400}}))
                return
            self.task = asyncio.get_running_loop().create_task(self._stream(body))
        else:
            self._finish(_json_response(404, {"error": {"message": "File Not Found", "code": 404}}))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if self.task is not None:
            self.task.cancel()

    def _finish(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()

    async def _stream(self, body: dict[str, Any]) -> None:
        transport = self.transport
        assert transport is not None
        asked = body.get("model")
        model = asked if isinstance(asked, str) else "synthetic"
        script = StreamScript(f"chatcmpl-{secrets.token_urlsafe(24)}", int(time.time()), model)
        count = length_of(body)
        pace = pace_of(body, self.upstream.pace)
        interval = 1 / pace if pace > 0 else 0.0
        loop = asyncio.get_running_loop()
        self.upstream.busy += 1
        try:
            transport.write(RESPONSE_HEAD)
            started = loop.time()
            for index in range(count):
                if transport.is_closing():
                    return
                transport.write(script.token_chunk(index))
                if interval:
                    await asyncio.sleep(max(started + (index + 1) * interval - loop.time(), 0))
                elif index % BURST == BURST - 1:
                    await asyncio.sleep(0)
                if not self.writable.is_set():
                    await self.writable.wait()
            elapsed_ms = (loop.time() - started) * 1000
            if not transport.is_closing():
                transport.write(script.closing(predicted_n=count, predicted_ms=max(elapsed_ms, 0.001)))
                transport.close()
        finally:
            self.upstream.busy -= 1


async def serve(socket_path: str, key: str, pace: float) -> None:
    upstream = Upstream(key, pace)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = await loop.create_unix_server(lambda: Connection(upstream), socket_path, backlog=4096)
    os.chmod(socket_path, 0o600)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llama_launcher.bench.synthetic", description=__doc__)
    parser.add_argument("--socket", required=True, help="the unix socket to listen on")
    parser.add_argument("--tokens-per-second", type=float, default=0.0, help="default pace per stream; 0: max")
    args = parser.parse_args(argv)
    from llama_launcher.bench.processes import raise_fd_limit, run_loop, take_upstream_key

    key = take_upstream_key("synthetic")
    if key is None:
        return 2
    raise_fd_limit()
    run_loop(serve(args.socket, key, args.tokens_per_second))
    return 0


if __name__ == "__main__":
    sys.exit(main())
