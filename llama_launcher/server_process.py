"""One llama-server process: start, wait until ready, respawn with a new key, stop.

Blocking and thread-based on purpose: the gate process runs this from its main thread (so that
``PR_SET_PDEATHSIG``, which fires when the *spawning thread* exits, lasts as long as the gate),
while the gate's event loop serves from another thread and reads :meth:`authorization` per request.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from llama_direct.llama_server import NotListening
from llama_direct.redaction import redact
from llama_launcher import process_group
from llama_launcher.child_wait import wait_for_exit
from llama_launcher.errors import StartError
from llama_launcher.master_key import MasterKey
from llama_launcher.progress import Progress
from llama_launcher.server_args import ListenAddress, ServerOptions, build_argv, parse_listening_line

log = logging.getLogger(__name__)
server_log = logging.getLogger(f"{__name__}.llama_server")
"""llama-server's own lines (with --verbose), apart from the launcher's."""

PR_SET_PDEATHSIG = 1
# A llama-server that dies this many times in a row before it is ready will not start on the next try
# either (a crash while loading, a bad model): stop and say why instead of respawning forever.
MAX_CONSECUTIVE_START_FAILURES = 3
LLAMA_CACHE_DIR = "llama-cache"
"""In router mode: llama.cpp's download cache, private and empty."""
_LAST_LINES = 40
_NOTABLE = ("error", "failed", "warn", "listening on", "model loaded")


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: lead a process group of its own (a router's children
    join it, and are stopped with it), and follow the spawning thread into death."""
    process_group.lead_new_group()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class LlamaServer:
    """Owns one llama-server and the master key it was started with.

    Satisfies the gate's ``Upstream`` protocol: ``address``, ``ssl``, ``host_header``,
    ``authorization()`` and ``is_ready()``.
    """

    ssl = None
    host_header = b"llama-server"

    def __init__(self, options: ServerOptions, runtime_dir: Path, *, listen: str = "auto") -> None:
        self.options = options
        self.runtime_dir = runtime_dir
        self.socket_path = runtime_dir / "llama.sock"
        self._listen_mode = listen  # "auto" tries the unix socket first, "unix", or "tcp"
        self._key: MasterKey | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._address: ListenAddress | None = None
        self._listening = threading.Event()
        self._ready = False
        self._stopping = False
        self._last_lines: collections.deque[str] = collections.deque(maxlen=_LAST_LINES)
        self.restarts = 0

    # -- the gate's view -------------------------------------------------------------------

    @property
    def address(self) -> str | tuple[str, int]:
        listen = self._address
        if listen is None:
            raise NotListening("llama-server is not listening yet")
        if listen.unix_path:
            return listen.unix_path
        assert listen.host is not None and listen.port is not None
        return (listen.host, listen.port)

    def authorization(self) -> bytes:
        key = self._key
        if key is None:
            raise NotListening("llama-server has not been started")
        return key.authorization()

    def is_ready(self) -> bool:
        return self._ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def exit_code(self) -> int | None:
        """The process's exit status once it has died (negative: the signal that killed it)."""
        return self._proc.poll() if self._proc else None

    def last_lines(self) -> list[str]:
        return list(self._last_lines)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn with a fresh key; returns at once (see :meth:`wait_ready`)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                raise RuntimeError("llama-server is already running")
            self._reap(self._proc)
        self._stopping = False
        self._ready = False
        self._address = None
        self._listening.clear()
        self._last_lines.clear()
        self._key = MasterKey.generate()
        unix = self._listen_mode != "tcp"
        if unix:
            self.socket_path.unlink(missing_ok=True)
        argv = build_argv(self.options, unix_socket=self.socket_path if unix else None)
        parent = os.getpid()
        env = dict(os.environ)
        if self.options.router is not None:
            # The router also lists llama.cpp's download cache: an empty private one lists nothing more.
            cache = self.runtime_dir / LLAMA_CACHE_DIR
            cache.mkdir(mode=0o700, exist_ok=True)
            env["LLAMA_CACHE"] = str(cache)
        self._proc = subprocess.Popen(
            argv,
            env=self._key.child_environment(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _die_with_parent(parent),
            close_fds=True,
        )
        process_group.record(self.runtime_dir, self._proc.pid, str(self.options.binary))
        log.info("llama-server started pid=%d listen=%s", self._proc.pid, "unix" if unix else "tcp")
        self._pump = threading.Thread(target=self._pump_output, args=(self._proc,), daemon=True)
        self._pump.start()

    def _pump_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact(raw.decode("utf-8", "replace").rstrip())
            if not line:
                continue
            self._last_lines.append(line)
            if self._address is None:
                found = parse_listening_line(line)
                if found:
                    self._address = found
                    self._listening.set()
            lowered = line.lower()
            level = logging.INFO if any(word in lowered for word in _NOTABLE) else logging.DEBUG
            server_log.log(level, "%s", line)

    def wait_ready(
        self, timeout: float = 600.0, *, show_progress: bool = True, stop: threading.Event | None = None
    ) -> None:
        """Poll ``/health`` while watching the process; raise :class:`StartError` on death or timeout."""
        progress = Progress("starting llama-server") if show_progress else None
        deadline = time.monotonic() + timeout
        while stop is None or not stop.is_set():
            proc = self._proc
            if proc is None:
                raise RuntimeError("llama-server has not been started")
            code = proc.poll()
            if code is not None:
                if self._pump:
                    self._pump.join(timeout=2)
                if self._listen_mode == "auto" and code > 0 and _could_not_bind(self.last_lines()):
                    log.warning("llama-server could not bind its unix socket; retrying on 127.0.0.1")
                    self._listen_mode = "tcp"
                    self.start()
                    continue
                self._reap(proc)
                phase = "while loading the model" if self._address is not None else "while starting"
                raise StartError(f"{describe_exit(code)} {phase}", exit_code=code, last_lines=self.last_lines())
            if time.monotonic() > deadline:
                lines = self.last_lines()
                self.stop()
                raise StartError(
                    f"llama-server was not ready within {timeout:.0f} s", exit_code=None, last_lines=lines
                )
            status = self._health() if self._listening.is_set() else None
            if status == 200:
                if self._listen_mode == "auto":
                    self._listen_mode = "unix" if self._address and self._address.unix_path else "tcp"
                self._ready = True
                log.info("llama-server ready pid=%d", proc.pid)
                return
            if progress:
                progress.say("loading the model" if status == 503 else "waiting for it to listen")
            time.sleep(0.05 if status is None else 0.1)
        self.stop()

    def _health(self) -> int | None:
        address = self.address
        if isinstance(address, str):
            transport = httpx.HTTPTransport(uds=address)
            url = "http://llama-server/health"
        else:
            transport = httpx.HTTPTransport()
            url = f"http://{address[0]}:{address[1]}/health"
        try:
            with httpx.Client(transport=transport, timeout=2.0) as client:
                return client.get(url).status_code
        except httpx.HTTPError:
            return None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to llama-server's process group, then SIGKILL to whatever of it is left after
        ``grace`` seconds: no process behind, a router's children included (`process_group`)."""
        self._stopping = True
        self._ready = False
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            process_group.signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:  # a router mid-reply waits on its child: normal at Ctrl-C
                log.info("llama-server did not stop within %.0f s of SIGTERM; killing its group", grace)
        process_group.signal_group(proc.pid, signal.SIGKILL)  # and any child that outlived its router
        proc.wait()
        process_group.forget(self.runtime_dir)
        self._reap(proc)
        self.socket_path.unlink(missing_ok=True)
        log.info("llama-server stopped pid=%d code=%s", proc.pid, proc.returncode)

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        """Collect what a dead process leaves: its output pump and its pipe."""
        if self._pump:
            self._pump.join(timeout=2)
        if proc.stdout and not proc.stdout.closed:
            proc.stdout.close()

    def restart(self) -> None:
        """Stop, then start with a new key: tokens keep working because the gate swaps the key."""
        self.stop()
        self.start()
        self.wait_ready(show_progress=False)

    def supervise(self, stop: threading.Event) -> None:
        """Respawn after an unexpected exit, with back-off, until ``stop`` is set.

        Must run on the thread that called :meth:`start`, for ``PR_SET_PDEATHSIG``'s sake. Between two
        exits it sleeps in one `select` on the process's pidfd and, for a `StopEvent` (the gate's),
        ``stop``'s pipe: an idle gate's main thread never wakes (`Popen.wait(0.1)` in a loop woke it
        80 times a second, issue 24).
        """
        backoff = 0.5
        started_at = time.monotonic()
        failures = 0  # consecutive exits before ready; a server that served resets it
        while not stop.is_set():
            proc = self._proc
            if proc is None:
                return
            if wait_for_exit([proc], stop) is None:
                continue  # stopped: the loop ends
            code = proc.returncode
            if stop.is_set() or self._stopping:
                return
            process_group.signal_group(proc.pid, signal.SIGKILL)  # a crashed router's children go with it
            self._ready = False
            if time.monotonic() - started_at > 60:
                backoff = 0.5
            log.warning("llama-server exited unexpectedly code=%s; respawning with a new key in %.1fs",
                        code, backoff)
            if stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
            self.restarts += 1
            started_at = time.monotonic()
            try:
                self.start()
                self.wait_ready(show_progress=False, stop=stop)
                failures = 0
            except StartError as error:
                failures += 1
                log.error("llama-server respawn failed (%d of %d in a row): %s; last line: %s", failures,
                          MAX_CONSECUTIVE_START_FAILURES, error, error.last_lines[-1] if error.last_lines else "")
                if failures >= MAX_CONSECUTIVE_START_FAILURES:
                    raise StartError(f"{error}, {failures} times in a row; not trying again",
                                     exit_code=error.exit_code, last_lines=error.last_lines) from None


_BIND_FAILED = ("couldn't bind", "could not bind", "failed to bind")


def _could_not_bind(lines: list[str]) -> bool:
    """Whether an early exit was the socket itself (llama-server says ``couldn't bind HTTP server
    socket`` when it cannot listen on a unix socket), not bad arguments, a bad model or a crash, which a
    TCP retry would only repeat under a misleading warning."""
    return any(words in line.lower() for line in lines for words in _BIND_FAILED)


def describe_exit(code: int) -> str:
    """``llama-server crashed with SIGSEGV`` for a signal, ``llama-server exited with code 1`` otherwise:
    a crash is called a crash."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"llama-server crashed with {name}"
    return f"llama-server exited with code {code}"
