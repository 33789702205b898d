"""The gate's I/O shell: parse each request once, check it once, then relay bytes untouched.

Three listeners share this code (`Listener`):

- public, one-port mode: `/direct/…` is the lane; every other request is relayed to the broker's
  unix socket, with `X-Forwarded-For` / `X-Forwarded-Proto` set by the gate alone;
- public, two-port mode: the lane only, cross-origin, so the gate answers preflight itself and puts
  CORS headers for the app's origins on its answers;
- private (`gate.sock`): the lane for the broker's baseline, and `GET /health`.

The request half runs once per request (httptools plus the gate's own checks, the token, the scope, the
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
and the body reader are gone once the relay starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence

from llama_direct.shared_replay import RedisReplayStore, async_client
from llama_launcher.gate.config import GateConfig, Listener
from llama_launcher.gate.connection import ClientConnection, rules_for
from llama_launcher.gate.core import Gate
from llama_launcher.gate.holders import RedisHolders
from llama_launcher.gate.keyset import KeySet
from llama_launcher.gate.metrics import MetricsServing
from llama_launcher.gate.pool import Pool
from llama_launcher.gate.upstream import (
    Upstream,
)

log = logging.getLogger(__name__)


class GateServer:
    """The gate's listeners and background pulls, started and stopped as one."""

    def __init__(
        self,
        config: GateConfig,
        upstream: Upstream | Sequence[tuple[str, Upstream]],
        *,
        keyset: KeySet | None = None,
        started_at: float | None = None,
        redis_url: str | None = None,
        metrics: MetricsServing | None = None,
    ) -> None:
        """`upstream`: the one llama-server, or several as (address, door) pairs (a fleet)."""
        self.config = config
        self.keyset = keyset or KeySet.for_config(config)
        client = async_client(redis_url) if redis_url else None
        self.shared = RedisReplayStore(client) if client is not None else None
        holders = RedisHolders(client, config.audience) if client is not None else None
        upstreams = upstream if isinstance(upstream, Sequence) else [("upstream", upstream)]
        self.pool = Pool(upstreams, config.model, holders)
        self.metrics = metrics or MetricsServing()
        self.gate = Gate(config, self.pool, self.keyset, started_at=started_at, shared=self.shared,
                         metrics=self.metrics)
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
        metrics_sock = self.metrics.sock
        for listening in (public_sock, app_sock, metrics_sock):
            if listening is not None:
                _tune_listener(listening)
        if public_sock is not None:
            listener = Listener(lane=True, broker=not config.two_port, cors=config.two_port, tls=config.tls,
                                metrics=not config.two_port)
            await self._listen(public_sock, listener)
        if app_sock is not None:
            await self._listen(app_sock, Listener(lane=False, broker=True, tls=config.tls, metrics=True))
        if metrics_sock is not None:
            await self._listen(metrics_sock, Listener(lane=False, tls=config.tls, metrics=True))
        private = Listener(lane=True, health=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.private_socket)
        rules = rules_for(self.gate, private)
        server = await loop.create_unix_server(lambda: ClientConnection(self.gate, private, rules),
                                               config.private_socket)
        os.chmod(config.private_socket, 0o600)
        self._servers.append(server)

    async def _listen(self, listening: socket.socket, listener: Listener) -> None:
        config = self.config
        rules = rules_for(self.gate, listener)  # once a listener: a connection's own costs 2.6 us
        self._servers.append(
            await asyncio.get_running_loop().create_server(
                lambda: ClientConnection(self.gate, listener, rules),
                sock=listening,
                ssl=_server_tls(config),
                ssl_handshake_timeout=config.head_timeout if config.tls else None,
            )
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        for connection in list(self.gate.connections):
            connection.shutdown()
        await self.gate.streams.close_all()
        self._stop_pulling.set()
        if self._puller is not None:
            await self._puller
        await self.keyset.aclose()
        await self.gate.loads.aclose()
        await self.gate.usage.aclose()
        await self.gate.broker_metrics.aclose()
        await self.pool.close()
        if self.shared is not None:
            await self.shared.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.private_socket)


UNSENT_LOWAT = 64 * 1024
"""Bytes of an answer the kernel may hold unsent for one client (`TCP_NOTSENT_LOWAT`). Linux grows a
connection's send buffer to 4 MiB by itself, and a client that reads nothing would take all of it: an
answer's first 4 MiB (some 15,000 chat tokens) were generated before the gate's write buffer filled and
`--send-timeout` began to count. Bytes in flight are not limited, so a fast client reads as fast."""
_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)
"""Linux's and macOS's option; where Python has none, the kernel's own buffering stands."""


def _tune_listener(listening: socket.socket) -> None:
    """Set once on the listening socket, as every socket it accepts inherits both on Linux (a socket
    wrapper and two syscalls saved per connection): Nagle off, since the head and each chunk are small
    writes and Nagle would hold the second back until the client's delayed ACK (40 ms); and at most
    `UNSENT_LOWAT` unsent bytes in the kernel, so that a client that stops reading fills the gate's
    own write buffer soon, which is what pauses the relay and arms the send timeout."""
    if listening.family in (socket.AF_INET, socket.AF_INET6):
        listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _NOTSENT_LOWAT is not None:
            listening.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, UNSENT_LOWAT)


def _server_tls(config: GateConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def serve_gate(
    config: GateConfig,
    upstream: Upstream | Sequence[tuple[str, Upstream]],
    public_sock: socket.socket | None,
    stop: asyncio.Event,
    app_sock: socket.socket | None = None,
    started: Callable[[], None] | None = None,
    redis_url: str | None = None,
    metrics: MetricsServing | None = None,
) -> None:
    """Serve until `stop` is set, then close the listeners and every live connection.

    `started` is called once every listener is up, so a caller never mistakes a gate that failed
    to bind (a bad TLS pair, say) for one that serves.
    """
    server = GateServer(config, upstream, redis_url=redis_url, metrics=metrics)
    await server.start(public_sock, app_sock)
    log.info("gate serving two_port=%s tls=%s", config.two_port, config.tls)
    if started is not None:
        started()
    try:
        await stop.wait()
    finally:
        await server.close()
