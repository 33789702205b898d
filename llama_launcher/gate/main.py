"""The gate process: llama-server's owner (main thread) and the lane's event loop (second thread).

llama-server is spawned and respawned from the main thread because ``PR_SET_PDEATHSIG`` follows
the spawning thread; the event loop runs beside it and never waits on the launcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
from pathlib import Path

from llama_direct.logs import configure_logging
from llama_direct.redaction import register_secret
from llama_direct.runtime import (
    APP_FD_ENV,
    GATE_CONFIG_FILE,
    GATE_EXIT_GAVE_UP,
    GATE_FAILURE_FILE,
    LAUNCH_FILE,
    PUBLIC_FD_ENV,
    REDIS_URL_ENV,
    RUNTIME_ENV,
    UPSTREAM_KEYS_ENV,
)
from llama_direct.shared_replay import register_url
from llama_launcher.attached import AttachedServer
from llama_launcher.child_wait import StopEvent
from llama_launcher.errors import LauncherError, StartError
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.proxy import serve_gate
from llama_launcher.launch_spec import LaunchSpec
from llama_launcher.server_process import LlamaServer, server_log
from llama_launcher.smoke import remedy

log = logging.getLogger(__name__)



def raise_fd_limit() -> None:
    """Each held stream costs two descriptors; the default soft limit of 1,024 is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _LoopThread:
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
    ) -> None:
        self._redis_url = redis_url
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
            started=self._started.set, redis_url=self._redis_url,
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


def attached_upstreams(urls: list[str], keys_json: str | None) -> list[tuple[str, AttachedServer]]:
    """Each `--upstream` with its key, paired by position as the parent handed them over."""
    keys = json.loads(keys_json) if keys_json else [None] * len(urls)
    if not urls or len(keys) != len(urls):
        raise LauncherError("attach mode needs one key entry per upstream")
    for key in keys:
        if key:
            register_secret(key)
    return [(url, AttachedServer(url, key)) for url, key in zip(urls, keys, strict=True)]


def report_failure(runtime: Path, error: StartError, spec: LaunchSpec) -> bool:
    """Tell the parent why, so its last line names the cause and a remedy rather than this process's
    exit code; False if the report could not be written. The lines were redacted as they were read."""
    record = {"message": str(error), "last_lines": error.last_lines[-10:],
              "remedy": remedy(error.exit_code, spec.extra_args, "serve")}
    try:
        (runtime / GATE_FAILURE_FILE).write_text(json.dumps(record))
    except OSError:
        return False
    return True


def main() -> int:
    configure_logging(process="gate", whole=(server_log.name,))
    runtime = Path(os.environ[RUNTIME_ENV])
    config = GateConfig.from_file(runtime / GATE_CONFIG_FILE)
    spec = LaunchSpec.read(runtime / LAUNCH_FILE).materialise(runtime)
    raise_fd_limit()
    public_fd = os.environ.get(PUBLIC_FD_ENV)
    public_sock = socket.socket(fileno=int(public_fd)) if public_fd else None
    app_fd = os.environ.get(APP_FD_ENV)
    app_sock = socket.socket(fileno=int(app_fd)) if app_fd else None

    stop = StopEvent()  # a select can wait on it: the supervisor's wait never polls

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal=%s stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server: LlamaServer | None = None
    try:
        if spec.mode == "attach":
            upstream: object = attached_upstreams(spec.upstreams, os.environ.pop(UPSTREAM_KEYS_ENV, None))
        else:
            server = LlamaServer(spec.server_options(), runtime)
            upstream = server
    except LauncherError as error:
        log.error("cannot start: %s", error)
        return 2

    redis_url = os.environ.pop(REDIS_URL_ENV, None) or None
    if redis_url:
        register_url(redis_url)
    loop = _LoopThread(config, upstream, public_sock, app_sock, on_exit=stop, redis_url=redis_url)
    loop.start()
    if loop.failed:
        return 1
    code = 0
    try:
        if server is not None:
            server.start()
            server.wait_ready(stop=stop, show_progress=False)
            if not stop.is_set():
                server.supervise(stop)
        else:
            stop.wait()
    except StartError as error:
        # The parent shows a report on the terminal, once; the log file keeps it either way.
        level = logging.INFO if report_failure(runtime, error, spec) else logging.ERROR
        log.log(level, "llama-server did not start: %s", error)
        for line in error.last_lines[-10:]:
            log.log(level, "llama-server said: %s", line)
        code = GATE_EXIT_GAVE_UP
    finally:
        loop.stop()
        if server is not None:
            server.stop()
    if loop.failed:
        code = 1
    log.info("gate stopped code=%d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
