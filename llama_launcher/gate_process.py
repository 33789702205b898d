"""The gate process (``python -m llama_launcher.gate_process``, started by ``llama-direct serve``).

It composes the two halves that must not import each other: the launcher's llama-server (started,
respawned and stopped from this main thread, because ``PR_SET_PDEATHSIG`` follows the spawning
thread) or attached upstreams, and the gate's lane (`llama_launcher.gate`, which knows only the
contract) on its own event loop beside it (`gate_loop`). A llama-server that cannot start is
reported to the parent (`gate_failure`) and the process exits with `GATE_EXIT_GAVE_UP`.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path

from llama_direct.logs import configure_logging
from llama_direct.metrics import METRICS_FD_ENV, METRICS_PER_USER_ENV, METRICS_TOKEN_ENV
from llama_direct.redaction import register_secret
from llama_direct.runtime import (
    APP_FD_ENV,
    GATE_CONFIG_FILE,
    GATE_EXIT_GAVE_UP,
    LAUNCH_FILE,
    PUBLIC_FD_ENV,
    REDIS_URL_ENV,
    RUNTIME_ENV,
    UPSTREAM_KEYS_ENV,
)
from llama_direct.shared_replay import register_url
from llama_launcher.attached import attached_upstreams
from llama_launcher.child_wait import StopEvent
from llama_launcher.errors import LauncherError, StartError
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.metrics import MetricsServing
from llama_launcher.gate_failure import write_report
from llama_launcher.gate_loop import GateLoop
from llama_launcher.launch_spec import LaunchSpec
from llama_launcher.server_process import LlamaServer, server_log

log = logging.getLogger("llama_launcher.gate_process")
"""Named, not `__name__`: run with ``-m``, this module is `__main__`, and the log names its logger."""


def raise_fd_limit() -> None:
    """Each held stream costs two descriptors; the default soft limit of 1,024 is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _inherited_socket(variable: str) -> socket.socket | None:
    """A listening socket the parent bound and handed over by its fd number, if it did."""
    fd = os.environ.get(variable)
    return socket.socket(fileno=int(fd)) if fd else None


def _metrics_serving() -> MetricsServing:
    """`/metrics`'s token (from the parent, registered for redaction) and `--metrics-port`'s socket."""
    token = os.environ.pop(METRICS_TOKEN_ENV, None) or None
    if token is not None:
        register_secret(token)
    per_user = os.environ.get(METRICS_PER_USER_ENV) == "1"
    return MetricsServing(token=token, per_user=per_user, sock=_inherited_socket(METRICS_FD_ENV))


def main() -> int:
    configure_logging(process="gate", whole=(server_log.name,))
    runtime = Path(os.environ[RUNTIME_ENV])
    try:
        config = GateConfig.from_file(runtime / GATE_CONFIG_FILE)
        spec = LaunchSpec.read(runtime / LAUNCH_FILE).materialise(runtime)
    except ValueError as error:  # a field of another shape (named, never its value), or one out of range
        log.error("cannot start: %s", error)
        return 2
    raise_fd_limit()
    public_sock = _inherited_socket(PUBLIC_FD_ENV)
    app_sock = _inherited_socket(APP_FD_ENV)

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
    loop = GateLoop(config, upstream, public_sock, app_sock, on_exit=stop, redis_url=redis_url,
                    metrics=_metrics_serving())
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
        level = logging.INFO if write_report(runtime, error, spec.extra_args) else logging.ERROR
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
