"""Start the lane from an app's own code: the gate and llama-server, one per data dir, for every worker.

An app that mounts the broker (`broker.mount`) still needs a gate in front of llama-server, in a
process of its own: the gate holds llama-server's master key, and no process of the app ever may.
`start_lane` gives it one, or joins the one that already serves its data dir::

    from llama_launcher.lane import start_lane
    from broker.mount import direct_router, mounted_core

    with start_lane("/var/lib/myapp/llm", allowed_origins=["https://app.example"]) as lane:
        core = mounted_core(lane.broker_settings)   # mints tokens the lane's gate trusts
        app.include_router(direct_router(core, who=current_user, lane_url=lane.url))
        ...

`astart_lane` is the same for an event loop (`async with await astart_lane(...) as lane`).

- **Any thread, any worker count.** The lane runs in a process of its own session, started without
  a parent-death signal (one tied to the thread that spawned it would stop it when a worker thread
  ends). It lives while some app process holds a lease on it (`lane_leases`): the kernel ends a lease
  however its process ends, so the lane stops after the app's last worker, never before.
- **One per data dir.** A worker that starts while a lane serves the data dir attaches to it (its
  `lane.json`); the start lock in the data dir makes two workers that start together agree.
  The first one's options win; an attaching worker's are not checked against them.
- **One set of keys.** The lane's broker half makes the signing keys in the data dir and publishes
  their public halves to the gate; `mounted_core` loads the same keys, so every worker signs with the
  key the gate knows. The lane's keys do not rotate on a schedule (nothing that signs could tell the
  others); replace them by stopping every worker, deleting `keys/`, and starting again.
- The lane's flags are `serve`'s (`llama-direct serve --help`): the options below, plus `serve_flags`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from llama_direct.runtime import (
    LANE_FILE,
    LANE_LEASE_FD_ENV,
    LANE_READY_FD_ENV,
    LANE_START_LOCK,
    UPSTREAM_KEY_ENV,
)
from llama_launcher.errors import LauncherError
from llama_launcher.lane_leases import GREETING, LAST, RELEASE
from llama_launcher.supervisor import check_data_dir

START_TIMEOUT_SECONDS = 900.0
"""A first start may build llama-server and fetch the model: minutes, with progress on stderr."""
GREETING_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class LaneOptions:
    """What a lane runs: `serve`'s options, less the app port (the app serves its own pages)."""

    data_dir: Path
    allowed_origins: tuple[str, ...] = ()
    """The app's origins: the only pages whose requests the lane, on its own port, answers (CORS)."""
    host: str = "127.0.0.1"
    port: int = 0
    """The lane's port; 0 picks a free one (`Lane.url` says which)."""
    public_url: str | None = None
    """The lane's base as browsers reach it behind a reverse proxy (`/direct` is appended)."""
    model: Path | None = None
    """A GGUF file; None: the default small model, fetched once into the cache."""
    llama_server: Path | None = None
    """The binary; None: found or built once into the cache."""
    upstream: str | None = None
    """Attach to a llama-server that runs already (its key in `upstream_key`), instead of starting one."""
    upstream_key: str | None = field(default=None, repr=False)
    ctx: int | None = None
    parallel: int | None = None
    max_tokens: int | None = None
    """The hard cap on a reply's length (`serve --max-tokens`)."""
    chat_template: str | None = None
    serve_flags: tuple[str, ...] = ()
    """Any other `serve` flags, such as `("--token-ttl", "60")`."""
    server_args: tuple[str, ...] = ()
    """Extra llama-server arguments (those the launcher owns are refused, as after `serve --`)."""

    def argv(self) -> list[str]:
        """The lane process's `serve` flags; secrets (the upstream key) travel in its environment instead."""
        argv = ["--data-dir", str(self.data_dir), "--host", self.host, "--gate-port", str(self.port),
                "--key-rotation-hours", "0"]
        for origin in self.allowed_origins:
            argv += ["--allow-origin", origin]
        optional = {"--model": self.model, "--llama-server": self.llama_server, "--upstream": self.upstream,
                    "--ctx": self.ctx, "--parallel": self.parallel, "--max-tokens": self.max_tokens,
                    "--chat-template": self.chat_template}
        for flag, value in optional.items():
            if value is not None:
                argv += [flag, str(value)]
        argv += list(self.serve_flags)
        if self.server_args:
            argv += ["--", *self.server_args]
        return argv


class Lane:
    """A lane this process holds: its URL, and the settings a mounted broker needs to sign for it.

    `stop()` lets go of it; the lane stops when no process of the app holds it any more. A context
    manager, plain or async.
    """

    def __init__(self, document: dict[str, Any], lease: socket.socket, process: subprocess.Popen[bytes] | None):
        self.url: str = document["url"]
        """The lane's base as the browser reaches it, such as `http://127.0.0.1:39511/direct`."""
        self.pid: int = document["pid"]
        """The lane process (its children: the gate, which owns llama-server, and the broker half)."""
        self.broker_settings: dict[str, Any] = document["broker_settings"]
        """For `broker.mount.mounted_core`: the data dir (the keys), the gate's socket, the models, the limits."""
        self.started = process is not None
        """True when this call started the lane; False when it joined one another worker started."""
        self._lease: socket.socket | None = lease
        self._process = process

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Let go of the lane; when this was its last holder, wait (up to `timeout`) until it has stopped."""
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            last = _exchange(lease, timeout, lambda: lease.sendall(RELEASE), LAST)
        finally:
            lease.close()
        if last:
            self._wait_gone(timeout)

    def _wait_gone(self, timeout: float) -> None:
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                raise LauncherError(f"the lane did not stop within {timeout:.0f} s") from None
            return
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        try:
            if not select.select([pidfd], [], [], timeout)[0]:
                raise LauncherError(f"the lane did not stop within {timeout:.0f} s")
        finally:
            os.close(pidfd)

    async def astop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        await asyncio.to_thread(self.stop, timeout)

    def __enter__(self) -> Lane:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Lane:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.astop()


def start_lane(data_dir: Path | str, *, allowed_origins: Iterable[str] = (), timeout: float = START_TIMEOUT_SECONDS,
               **options: Any) -> Lane:
    """The lane that serves `data_dir`: joined when one runs, else started and waited for until ready.

    `options` are `LaneOptions`' fields (`model=`, `llama_server=`, `upstream=`, `port=`, ...).
    Raises `LauncherError` with the cause when the lane cannot start (a bad flag, llama-server that
    will not load the model). Safe from any thread and from any number of worker processes.
    """
    path = Path(data_dir).resolve()
    lane_options = LaneOptions(data_dir=path, allowed_origins=tuple(allowed_origins), **options)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_data_dir(path)
    with _start_lock(path):
        joined = _join(path)
        if joined is not None:
            return joined
        return _spawn(lane_options, timeout)


async def astart_lane(data_dir: Path | str, *, allowed_origins: Iterable[str] = (),
                      timeout: float = START_TIMEOUT_SECONDS, **options: Any) -> Lane:
    """`start_lane` off the event loop: the start may take minutes, and the lane outlives the thread."""
    return await asyncio.to_thread(start_lane, data_dir, allowed_origins=allowed_origins, timeout=timeout, **options)


@contextlib.contextmanager
def _start_lock(data_dir: Path) -> Iterator[None]:
    """One worker at a time looks for a lane and starts one; the others then find it and join."""
    fd = os.open(data_dir / LANE_START_LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _join(data_dir: Path) -> Lane | None:
    """The lane that serves `data_dir`, with a lease on it; None when there is none (or it is stopping)."""
    try:
        document = json.loads((data_dir / LANE_FILE).read_text())
        lease_path = str(document["lease_socket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    lease = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if not _exchange(lease, GREETING_TIMEOUT_SECONDS, lambda: lease.connect(lease_path), GREETING):
        lease.close()  # a lane left from a crash, or one that stopped counting as we came
        return None
    lease.settimeout(None)
    return Lane(document, lease, None)


def _exchange(lease: socket.socket, timeout: float, step: Callable[[], object], expected: bytes) -> bool:
    """One step on the lease socket (a connect, a send), then whether the lane answered `expected`:
    a socket error or a lane gone reads as no."""
    try:
        lease.settimeout(timeout)
        step()
        return lease.recv(len(expected)) == expected
    except OSError:
        return False


def _spawn(options: LaneOptions, timeout: float) -> Lane:
    """Start the lane process, holding its first lease, and wait for its lane document."""
    ours, theirs = socket.socketpair()
    ready_r, ready_w = os.pipe()
    env = {**os.environ, LANE_LEASE_FD_ENV: str(theirs.fileno()), LANE_READY_FD_ENV: str(ready_w)}
    env.pop(UPSTREAM_KEY_ENV, None)
    if options.upstream_key is not None:
        env[UPSTREAM_KEY_ENV] = options.upstream_key
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_launcher.lane_process"], stdin=subprocess.PIPE, env=env,
            # Not the app's stdout: the lane may outlive this process, and whoever reads the app's
            # output until it ends would wait for the lane too. Its progress and errors go to stderr
            # (and its log files in the data dir's `logs/`).
            stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(), ready_w), start_new_session=True,
        )
    finally:
        theirs.close()
        os.close(ready_w)
    try:
        assert process.stdin is not None
        process.stdin.write(json.dumps({"argv": options.argv(), "public_url": options.public_url}).encode() + b"\n")
        process.stdin.close()
        document = _read_ready(ready_r, process, timeout)
    except BaseException:
        ours.close()  # its last lease gone, the lane stops by itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT_SECONDS)
        raise
    finally:
        os.close(ready_r)
    return Lane(document, ours, process)


def _read_ready(fd: int, process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The lane process's one message, read until it closes the pipe: its document, or why it failed."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LauncherError(f"the lane was not ready within {timeout:.0f} s")
        if not select.select([fd], [], [], min(left, 1.0))[0]:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return parse_ready(b"".join(chunks), process.poll())


def parse_ready(message: bytes, exit_code: int | None) -> dict[str, Any]:
    """The ready message as a lane document; a failure's cause as a `LauncherError`."""
    try:
        document = json.loads(message) if message else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise LauncherError(f"the lane process stopped before it was ready (exit code {exit_code})")
    if "error" in document:
        raise LauncherError(str(document["error"]))
    missing = [name for name in ("url", "pid", "lease_socket", "broker_settings") if name not in document]
    if missing:
        raise LauncherError(f"the lane process's ready message lacks {', '.join(missing)}")
    return document
