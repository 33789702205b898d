"""The lane process (``python -m llama_launcher.lane_process``), started by `llama_launcher.lane`.

It is `serve`'s parent without the app port: the same plan from the same flags (`cli.stack_plan`),
the same children (the gate, which owns llama-server and the master key, and the broker half that
serves the gate the JWKS and the revocations on the control socket), the same restarts. What differs:

- It is started by an app's process, from whichever thread, in a session of its own and without a
  parent-death signal. It lives while some app process holds a lease (`lane_leases`), so a worker
  thread that ends, or the worker that started it exiting while others use it, stops nothing.
- Its flags come on stdin (one JSON list), its secrets in its environment, never on argv.
- When ready it writes the lane document to the data dir's `lane.json`, for the app's other workers,
  and to the ready pipe its starter reads; then it closes the pipe.

Its children die with it (they are spawned from its main thread with `PR_SET_PDEATHSIG`), and the
gate stops llama-server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from llama_direct.lanes import LANE_PREFIX
from llama_direct.logs import configure_logging
from llama_direct.runtime import (
    BROKER_CONFIG_FILE,
    LANE_FILE,
    LANE_LEASE_FD_ENV,
    LANE_READY_FD_ENV,
    LEASE_SOCKET,
    LOG_FORMAT_ENV,
    LOG_LEVEL_ENV,
)
from llama_launcher import cli
from llama_launcher.errors import LauncherError
from llama_launcher.lane_leases import Leases, bind_lease_socket
from llama_launcher.supervisor import Stack

log = logging.getLogger("llama_launcher.lane_process")
"""Named, not `__name__`: run with ``-m``, this module is `__main__`."""

DATA_DIR_WAIT_SECONDS = 60.0
"""A lane that just lost its last lease may still be stopping when the next one starts on its data dir."""


def lane_document(stack: Stack, public_url: str | None) -> dict[str, Any]:
    """What an app process needs to use the lane: its URL, its lease socket, its broker half's settings."""
    if public_url:
        url = public_url.rstrip("/") + LANE_PREFIX
    else:
        host = stack.plan.host if stack.plan.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        url = f"{'https' if stack.plan.tls else 'http'}://{host}:{stack.lane_port}{LANE_PREFIX}"
    broker = json.loads((stack.runtime / BROKER_CONFIG_FILE).read_text())
    return {"url": url, "pid": os.getpid(), "lease_socket": str(stack.runtime / LEASE_SOCKET),
            "broker_settings": broker}


def _write_lane_file(data_dir: Path, document: dict[str, Any]) -> None:
    path = data_dir / LANE_FILE
    tmp = path.with_name(f".{LANE_FILE}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(document, file)
    os.replace(tmp, path)


class ReadyPipe:
    """The one message to the starter: the lane document, or `{"error": ...}`; then the pipe closes."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def say(self, document: dict[str, Any]) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError), os.fdopen(fd, "w") as pipe:  # a starter that is gone reads nothing
            pipe.write(json.dumps(document))


def run(argv: list[str], public_url: str | None, first_lease: socket.socket, ready: ReadyPipe) -> int:
    args = cli.serve_args(argv)
    if args.verbose:
        os.environ[LOG_LEVEL_ENV] = "DEBUG"
    os.environ[LOG_FORMAT_ENV] = args.log_format
    configure_logging(process="serve", file_pending=True)
    plan = replace(cli.stack_plan(args, access_token=secrets.token_urlsafe(32)), port=None)
    stack = Stack(plan, lock_wait=DATA_DIR_WAIT_SECONDS)
    leases = Leases(bind_lease_socket(stack.runtime / LEASE_SOCKET), first_lease, stack.stopping.set)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal=%s stopping", signal.Signals(signum).name)
        stack.stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    lane_file = plan.data_dir / LANE_FILE
    try:
        leases.start()
        stack.start_broker()
        stack.start_gate()
        stack.wait_ready()
        if stack.stopping.is_set():
            raise LauncherError("every app process let go of the lane before it was ready")
        document = lane_document(stack, public_url)
        _write_lane_file(plan.data_dir, document)
        ready.say(document)
        log.info("event=lane_ready url=%s", document["url"])
        stack.supervise()
    except LauncherError as error:
        ready.say({"error": str(error)})
        log.error("event=lane_failed reason=%s", error)
        return 1
    finally:
        lane_file.unlink(missing_ok=True)
        leases.close()
        stack.shutdown()
        stack.lock.close()
    return 0


def main() -> int:
    ready_fd = int(os.environ.pop(LANE_READY_FD_ENV))
    lease = socket.socket(fileno=int(os.environ.pop(LANE_LEASE_FD_ENV)))
    os.set_inheritable(ready_fd, False)  # neither may reach the children: a lease must end with this process
    lease.set_inheritable(False)
    ready = ReadyPipe(ready_fd)
    request = json.loads(sys.stdin.readline())
    try:
        return run([str(a) for a in request["argv"]], request.get("public_url"), lease, ready)
    except LauncherError as error:  # before the stack was up: a bad flag, a data dir in use
        ready.say({"error": str(error)})
        return 2


if __name__ == "__main__":
    sys.exit(main())
