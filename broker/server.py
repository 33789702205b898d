"""`python -m broker`: both apps in one event loop, each on its own 0600 unix socket.

The broker never listens on a TCP port: the gate relays the public traffic to `broker_socket` and
pulls keys and revocations from `control_socket`. Signals are handled here, not by uvicorn, so that
SIGTERM and SIGINT stop both servers gracefully and the process exits 0 (uvicorn would re-raise
the signal after its shutdown, and the exit status would say "killed").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Generator, Iterator
from email.utils import formatdate
from pathlib import Path

import uvicorn
import uvicorn.server
from fastapi import FastAPI

from broker.app import create_app, create_control_app
from broker.core import BrokerCore
from broker.settings import BrokerSettings, SettingsError, access_token_from_env
from llama_direct.logs import configure_logging
from llama_direct.runtime import REDIS_URL_ENV
from llama_direct.shared_replay import register_url

logger = logging.getLogger(__name__)

BACKLOG = 1024
GRACEFUL_SHUTDOWN_SECONDS = 3
EXIT_BAD_SETTINGS = 2


class _DatedState(uvicorn.server.ServerState):
    """uvicorn's shared server state, with the `Date` header made when a response asks for it.

    uvicorn refreshes `default_headers` from a timer once a second; this state builds them on
    read, at most once per wall-clock second, so an idle broker has no timer to wake for.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__()
        self._config = config
        self._second = -1
        self._headers: list[tuple[bytes, bytes]] = []

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            date = [(b"date", formatdate(now, usegmt=True).encode())] if self._config.date_header else []
            self._headers = date + self._config.encoded_headers
        return self._headers

    @default_headers.setter
    def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        """uvicorn's own tick and `ServerState.__init__` assign it; the read above is what counts."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to `serve`, and never wakes while idle.

    uvicorn's own main loop wakes ten times a second to notice `should_exit` and refresh the
    `Date` header; on this box every wake of an idle process costs 150-300 µs of CPU, however
    little it does. This one sleeps until `stop` is called, and `_DatedState` makes the `Date`
    header on demand.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.server_state = _DatedState(config)
        self._stopping = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stop(self) -> None:
        self.should_exit = True
        self._stopping.set()

    async def main_loop(self) -> None:
        await self._stopping.wait()


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening socket at `path`, 0600 from the moment it exists; a stale socket file goes first."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SettingsError("a socket path is taken by something that is not a socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def _config(app: FastAPI) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        access_log=False,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        lifespan="on",
        loop="none",
        http="httptools",
        ws="none",
        backlog=BACKLOG,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


async def serve(settings: BrokerSettings, access_token: str) -> None:
    """Run the public and the control app until a signal, or until either stops."""
    redis_url = os.environ.pop(REDIS_URL_ENV, None) or None
    if redis_url:
        register_url(redis_url)
    core = BrokerCore(settings, access_token, redis_url=redis_url)
    servers = [
        (_Server(_config(create_app(settings, access_token, core=core))), settings.broker_socket),
        (_Server(_config(create_control_app(core))), settings.control_socket),
    ]

    def stop_all() -> None:
        core.stop_waiting()
        for server, _ in servers:
            server.stop()

    with _signals_stop(stop_all), _sockets([path for _, path in servers]) as sockets:
        logger.info("event=broker_listening sockets=%d", len(sockets))

        async def run(server: uvicorn.Server, sock: socket.socket) -> None:
            try:
                await server.serve(sockets=[sock])
            finally:
                stop_all()

        await asyncio.gather(*(run(server, sock) for (server, _), sock in zip(servers, sockets, strict=True)))
    logger.info("event=broker_stopped")


@contextlib.contextmanager
def _signals_stop(stop: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def _sockets(paths: list[Path]) -> Iterator[list[socket.socket]]:
    """Bind every socket, and remove the files again however the servers end."""
    sockets: list[socket.socket] = []
    try:
        for path in paths:
            sockets.append(bind_unix_socket(path))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()
        for path in paths[: len(sockets)]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> None:
    configure_logging(process="broker")
    # Two servers, each saying it started and stopped: the broker says both once, itself.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        settings = BrokerSettings.from_env()
        access_token = access_token_from_env()
    except SettingsError as exc:
        logger.error("event=bad_settings reason=%s", exc)
        sys.exit(EXIT_BAD_SETTINGS)
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(serve(settings, access_token))
    except SettingsError as exc:
        logger.error("event=cannot_serve reason=%s", exc)
        sys.exit(1)
    except OSError as exc:
        logger.error("event=cannot_serve error=%s", type(exc).__name__)
        sys.exit(1)
    sys.exit(0)
