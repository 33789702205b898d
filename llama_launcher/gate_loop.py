"""The gate's event loop on a thread of its own, beside the gate process's main thread.

The main thread must stay free to spawn, wait on and respawn llama-server (``PR_SET_PDEATHSIG``
follows the spawning thread, see `server_process`), so the lane's listeners run here; the loop
never waits on the launcher, and the launcher never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import threading

from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.metrics import MetricsServing
from llama_launcher.gate.proxy import serve_gate

log = logging.getLogger(__name__)


class GateLoop:
    """Runs :func:`serve_gate` on its own event loop until asked to stop.

    If the loop dies, `on_exit` is set, so the main thread stops llama-server and the process exits:
    the parent then sees a dead gate instead of a live process that serves nothing.
    """

    def __init__(
        self,
        config: GateConfig,
        upstream: object,
        public_sock: socket.socket | None,
        app_sock: socket.socket | None,
        on_exit: threading.Event,
        redis_url: str | None = None,
        metrics: MetricsServing | None = None,
    ) -> None:
        self._redis_url = redis_url
        self._metrics = metrics
        self._config = config
        self._upstream = upstream
        self._public_sock = public_sock
        self._app_sock = app_sock
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self.failed = False
        self.thread = threading.Thread(target=self._run, name="gate-loop", daemon=True)

    def _run(self) -> None:
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            try:
                runner.run(self._main())
            except Exception:
                log.exception("the gate's event loop failed")
                self.failed = True
            finally:
                self._started.set()
                self._on_exit.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await serve_gate(
            self._config, self._upstream, self._public_sock, self._stop, self._app_sock,  # type: ignore[arg-type]  # _main runs only after the sockets and upstream are set
            started=self._started.set, redis_url=self._redis_url, metrics=self._metrics,
        )

    def start(self) -> None:
        self.thread.start()
        self._started.wait()
        # Everything made to start (modules, config, the loop) lives as long as the process: out of
        # the collector's sight, a full collection no longer walks it between two requests.
        gc.collect()
        gc.freeze()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop and self._stop:
            # A loop that already died is closed: there is nothing left to stop.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)
