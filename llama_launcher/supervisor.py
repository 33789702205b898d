"""``serve``'s parent process: the runtime dir, the public socket, two children, the ready line.

The parent holds no key. It binds the public port once and hands the listening socket to each
gate process it starts, so a gate restart loses no connection attempt. Each child runs in its own
process group, so a Ctrl-C reaches only the parent, which then stops the broker first and the gate
second (the gate stops llama-server): nothing respawns halfway through a shutdown.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx

from llama_direct.config_files import BrokerFile, BrokerFlags, GateFile, GateFlags
from llama_direct.ids import load_or_create_ids
from llama_direct.logs import open_log_file
from llama_direct.metrics import METRICS_FD_ENV, METRICS_PER_USER_ENV, METRICS_TOKEN_ENV
from llama_direct.runtime import (
    ACCESS_TOKEN_ENV,
    APP_FD_ENV,
    BROKER_CONFIG_ENV,
    BROKER_CONFIG_FILE,
    BROKER_SOCKET,
    CONTROL_SOCKET,
    GATE_CONFIG_FILE,
    GATE_EXIT_GAVE_UP,
    GATE_SOCKET,
    LAUNCH_FILE,
    LLAMA_API_KEY_ENV,
    LOG_DIR_ENV,
    LOGS_DIR,
    PROCESSES,
    PUBLIC_FD_ENV,
    REDIS_URL_ENV,
    RUNTIME_ENV,
    UPSTREAM_KEY_ENV,
    UPSTREAM_KEYS_ENV,
    format_ready_line,
    format_runtime_line,
    log_file_path,
)
from llama_launcher import process_group
from llama_launcher.child_wait import StopEvent, wait_for_exit
from llama_launcher.errors import LauncherError
from llama_launcher.gate_failure import read_report
from llama_launcher.launch_spec import LaunchSpec
from llama_launcher.paths import make_runtime_dir
from llama_launcher.progress import Progress

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STARTING_QUIET_SECONDS = 15.0
"""A start this quick needs no progress line: the default model loads in 2-6 s on a busy 2-core box; a big one
that takes minutes still shows it is loading."""
STOP_HINT = "llama-direct: Ctrl-C stops"
# A child that dies this many times in a row, each within QUICK_EXIT_SECONDS of its start, has a cause
# that a restart will not fix: stop and say so rather than restart it forever.
MAX_QUICK_RESTARTS = 5
QUICK_EXIT_SECONDS = 30.0


@dataclass(frozen=True)
class MetricsPlan:
    """`/metrics`: the token a scrape carries (the gate's alone; None: refused), `--metrics-port`, and
    `--metrics-per-user`."""

    token: str | None = None
    port: int | None = None
    per_user: bool = False


@dataclass
class StackPlan:
    """Everything decided before any child starts; built by the CLI from flags and environment."""

    host: str
    port: int | None
    """The app's public port (0: a free one); None: no app port, the lane alone (`llama_launcher.lane`:
    the host app serves its own pages, and `gate_port` is the lane's)."""
    data_dir: Path
    launch: LaunchSpec
    access_token: str
    broker_settings: BrokerFlags
    gate_settings: GateFlags
    upstream_keys: tuple[str | None, ...] = ()
    """Each attached upstream's key, by position (None: it has none)."""
    tls: bool = False
    public_url: str | None = None
    gate_port: int | None = None
    allow_origins: tuple[str, ...] = ()
    audience: str | None = None
    """`--audience`: the `aud` several gates share; None: the data dir's gate id."""
    issuers: tuple[str, ...] = ()
    """`--issuer`s: the brokers whose tokens the gate accepts; empty: the data dir's broker id."""
    redis_url: str | None = None
    """Shared state for several gates and brokers; both children get it in their environment."""
    metrics: MetricsPlan = field(default_factory=lambda: MetricsPlan())


def _child_setup(parent_pid: int) -> None:
    """In the child before exec: die with the parent even if it is SIGKILLed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def machine_names() -> list[str]:
    """This machine's name and the addresses it resolves to: what a LAN browser puts in a page's origin
    when the app listens on every interface. An origin not listed here needs `--allow-origin`."""
    name = socket.gethostname()
    names = [name] if name and name != "localhost" else []
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return names
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if not (address.is_loopback or address.is_link_local) and str(address) not in names:
            names.append(str(address))
    return names


def bind_public(host: str, port: int, flag: str = "--port") -> socket.socket:
    """Bind before anything starts, so a busy port is a one-line error and ``--port 0`` needs no race."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise LauncherError(f"cannot resolve --host {host}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise LauncherError(f"port {port} on {host} is already in use; choose another with {flag}") from None
        raise LauncherError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def check_data_dir(data_dir: Path) -> None:
    """The data dir holds the signing keys: only its owner, this user, may change what is in it."""
    info = data_dir.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise LauncherError(f"the data dir {data_dir} is not a directory")
    if info.st_uid != os.getuid():
        raise LauncherError(f"the data dir {data_dir} is not owned by this user; use one that is")
    if info.st_mode & 0o022:
        raise LauncherError(f"the data dir {data_dir} is writable by group or others; chmod go-w it")


class DataDirLock:
    """Two instances never share one data dir: their keys and ids would fight.

    `wait`: seconds to wait for another holder to let go (a lane that is still stopping when the next
    one starts), rather than refuse at once.
    """

    def __init__(self, data_dir: Path, wait: float = 0.0) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_data_dir(data_dir)
        try:
            fd = os.open(data_dir / ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise LauncherError(f"the lock file in the data dir {data_dir} is a symlink; remove it") from None
            raise LauncherError(f"cannot open the lock file in the data dir {data_dir}: {error.strerror}") from None
        self._handle: IO[str] = os.fdopen(fd, "w")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._handle.close()
                    raise LauncherError(f"another llama-direct serve is using the data dir {data_dir}") from None
                time.sleep(0.1)

    def close(self) -> None:
        """Let go of the data dir (serve holds it until it exits; `rotate-token` only while it writes)."""
        self._handle.close()


class Stack:
    def __init__(self, plan: StackPlan, lock_wait: float = 0.0) -> None:
        self.plan = plan
        # Ports first: a busy one is the likeliest mistake, and then nothing else must be left behind.
        self.public = bind_public(plan.host, plan.port) if plan.port is not None else None
        self.lane: socket.socket | None = None
        self.metrics: socket.socket | None = None
        try:
            if plan.gate_port is not None:
                self.lane = bind_public(plan.host, plan.gate_port, "--gate-port")
            if plan.metrics.port is not None:
                self.metrics = bind_public(plan.host, plan.metrics.port, "--metrics-port")
            self.lock = DataDirLock(plan.data_dir, lock_wait)
        except BaseException:
            for sock in (self.public, self.lane, self.metrics):
                if sock is not None:
                    sock.close()
            raise
        # Only now, holding the data dir, may this process write its log file there.
        self.log_dir = plan.data_dir / LOGS_DIR
        self.log_file = open_log_file(self.log_dir, "serve")
        self.runtime = make_runtime_dir()
        self.port: int | None = self.public.getsockname()[1] if self.public else None
        self.lane_port = self.lane.getsockname()[1] if self.lane else None
        self.gate: subprocess.Popen[bytes] | None = None
        self.broker: subprocess.Popen[bytes] | None = None
        self.stopping = StopEvent()
        self._write_configs()

    @property
    def gate_socket(self) -> Path:
        return self.runtime / GATE_SOCKET

    @property
    def broker_socket(self) -> Path:
        return self.runtime / BROKER_SOCKET

    def _write_configs(self) -> None:
        ids = load_or_create_ids(self.plan.data_dir)
        broker: BrokerFile = {
            **self.plan.broker_settings, "data_dir": str(self.plan.data_dir), "broker_socket": str(self.broker_socket),
            "control_socket": str(self.runtime / CONTROL_SOCKET), "gate_socket": str(self.gate_socket),
        }
        gate: GateFile = {
            **self.plan.gate_settings, "broker_socket": str(self.broker_socket),
            "control_socket": str(self.runtime / CONTROL_SOCKET), "private_socket": str(self.gate_socket),
            "audience": self.plan.audience or ids.gate_id, "issuer": list(self.plan.issuers) or [ids.broker_id],
        }
        if self.lane_port is not None:
            broker["gate_port"] = self.lane_port
            broker["allowed_origins"] = list(self.plan.allow_origins)
            gate["two_port"] = True
            gate["allowed_origins"] = [*self.app_origins(), *self.plan.allow_origins]
        (self.runtime / BROKER_CONFIG_FILE).write_text(json.dumps(broker, indent=2))
        (self.runtime / GATE_CONFIG_FILE).write_text(json.dumps(gate, indent=2))
        self.plan.launch.write(self.runtime / LAUNCH_FILE)

    def app_origins(self) -> list[str]:
        """The origins the page is served from, which may call a lane on its own port."""
        if self.port is None:  # the host app's origins are all in `allow_origins`
            return []
        if self.plan.public_url:
            parts = urlsplit(self.plan.public_url)
            return [f"{parts.scheme}://{parts.netloc}"]
        scheme = "https" if self.plan.tls else "http"
        host = self.plan.host
        if host in ("0.0.0.0", "::", ""):
            hosts = ["127.0.0.1", "localhost", *machine_names()]
        elif host in ("127.0.0.1", "localhost"):
            hosts = ["127.0.0.1", "localhost"]
        else:
            hosts = [host]
        return [f"{scheme}://{f'[{h}]' if ':' in h else h}:{self.port}" for h in hosts]

    def _env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in (ACCESS_TOKEN_ENV, UPSTREAM_KEY_ENV, UPSTREAM_KEYS_ENV, LLAMA_API_KEY_ENV, REDIS_URL_ENV,
                         METRICS_TOKEN_ENV)
        }
        if self.plan.redis_url:
            env[REDIS_URL_ENV] = self.plan.redis_url
        env[RUNTIME_ENV] = str(self.runtime)
        env[LOG_DIR_ENV] = str(self.log_dir)
        env[BROKER_CONFIG_ENV] = str(self.runtime / BROKER_CONFIG_FILE)
        env.update(extra)
        return env

    def _spawn(self, module: str, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        parent = os.getpid()
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdin=subprocess.DEVNULL,
            pass_fds=pass_fds,
            process_group=0,
            preexec_fn=lambda: _child_setup(parent),
        )

    def start_broker(self) -> None:
        if self.broker is None:
            log.info("%s", format_runtime_line(self.runtime, self.plan.host, self.port or self.lane_port or 0,
                                               url=self.base_url() if self.port is not None else None))
        self.broker = self._spawn("broker", self._env(**{ACCESS_TOKEN_ENV: self.plan.access_token}))
        log.info("broker started pid=%d", self.broker.pid)

    def start_gate(self) -> None:
        first = self.lane or self.public
        assert first is not None, "a stack serves a lane port, an app port, or both"
        extra = {PUBLIC_FD_ENV: str(first.fileno())}
        fds: tuple[int, ...] = (first.fileno(),)
        if self.lane is not None and self.public is not None:
            extra[APP_FD_ENV] = str(self.public.fileno())
            fds = (self.lane.fileno(), self.public.fileno())
        if self.plan.upstream_keys:
            extra[UPSTREAM_KEYS_ENV] = json.dumps(list(self.plan.upstream_keys))
        fds = (*fds, *self._metrics_env(extra))
        self.gate = self._spawn("llama_launcher.gate_process", self._env(**extra), pass_fds=fds)
        log.info("gate started pid=%d", self.gate.pid)

    def _metrics_env(self, extra: dict[str, str]) -> tuple[int, ...]:
        """What the gate alone is told of `/metrics`; the fds it must inherit (`--metrics-port`)."""
        metrics = self.plan.metrics
        if metrics.token is not None:
            extra[METRICS_TOKEN_ENV] = metrics.token
        if metrics.per_user:
            extra[METRICS_PER_USER_ENV] = "1"
        if self.metrics is None:
            return ()
        log.info("metrics port=%d", self.metrics.getsockname()[1])
        extra[METRICS_FD_ENV] = str(self.metrics.fileno())
        return (self.metrics.fileno(),)

    def wait_ready(self, timeout: float = 900.0) -> None:
        progress = Progress("starting", delay=STARTING_QUIET_SECONDS)
        deadline = time.monotonic() + timeout
        gate = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.gate_socket)), timeout=2.0)
        broker = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.runtime / CONTROL_SOCKET)), timeout=2.0)
        with gate, broker:
            while not self.stopping.is_set():
                for name, child in (("gate", self.gate), ("broker", self.broker)):
                    if child is not None and child.poll() is not None:
                        raise LauncherError(exit_cause(self.runtime, name, child.returncode, "while starting"))
                if time.monotonic() > deadline:
                    raise LauncherError(f"not ready within {timeout:.0f} s")
                state = _probe(gate, "http://gate/health")
                broker_state = _probe(broker, "http://broker/health")
                if state and state.get("model_ready") and broker_state and broker_state.get("lane_ready"):
                    return
                progress.say("loading the model" if state else "waiting for the gate and the broker")
                time.sleep(0.1)

    def base_url(self) -> str:
        if self.plan.public_url:
            return self.plan.public_url.rstrip("/")
        host = self.plan.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.plan.tls else 'http'}://{host}:{self.port}"

    def ready_url(self) -> str:
        return f"{self.base_url()}/?token={self.plan.access_token}"

    def start_lines(self) -> list[str]:
        """What the terminal says before the ready line: what is served, where, and where the logs go."""
        launch = self.plan.launch
        what = f"{len(launch.models)} models" if len(launch.models) > 1 else launch.alias
        files = ", ".join(log_file_path(self.log_dir, process).name for process in PROCESSES)
        return [f"llama-direct: serving {what} on {self.base_url()}",
                f"llama-direct: logs in {self.log_dir} ({files})"]

    def supervise(self) -> None:
        """Restart a child that dies on its own; return once a stop was asked for.

        A gate that gave up (llama-server cannot start) is not restarted, and neither is a child
        that keeps dying right after each start: both raise :class:`LauncherError` with the cause.
        """
        backoff = {"gate": 0.5, "broker": 0.5}
        started = {"gate": time.monotonic(), "broker": time.monotonic()}
        quick_exits = {"gate": 0, "broker": 0}
        while not self.stopping.is_set():
            # One `select` on both children's pidfds and the stop's pipe: an idle parent never wakes.
            wait_for_exit([c for c in (self.broker, self.gate) if c is not None], self.stopping)
            for name in ("broker", "gate"):
                child = self.broker if name == "broker" else self.gate
                if child is None or child.poll() is None or self.stopping.is_set():
                    continue
                code = child.returncode
                if name == "gate":  # a gate that died could not stop llama-server: its group goes now
                    process_group.kill_recorded(self.runtime)
                if name == "gate" and code == GATE_EXIT_GAVE_UP:
                    raise LauncherError(exit_cause(self.runtime, name, code, "while serving"))
                quick = time.monotonic() - started[name] < QUICK_EXIT_SECONDS
                quick_exits[name] = quick_exits[name] + 1 if quick else 0
                if quick_exits[name] >= MAX_QUICK_RESTARTS:
                    raise LauncherError(f"the {name} process exited {quick_exits[name]} times in a row within "
                                        f"{QUICK_EXIT_SECONDS:.0f} s of starting (last code {code}); not restarting it")
                log.warning("%s exited unexpectedly code=%s; restarting in %.1fs", name, code, backoff[name])
                if self.stopping.wait(backoff[name]):
                    return
                backoff[name] = min(backoff[name] * 2, 10.0)
                (self.start_broker if name == "broker" else self.start_gate)()
                started[name] = time.monotonic()

    def shutdown(self) -> None:
        self.stopping.set()
        # The gate first: it stops taking requests, and its key long poll ends with it, so the broker
        # stopping after it finds no poll held and the gate no broker gone from under it.
        for name, child, grace in (("gate", self.gate, 15.0), ("broker", self.broker, 10.0)):
            if child is None or child.poll() is not None:
                continue
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", name, grace)
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        process_group.kill_recorded(self.runtime)  # a gate killed above could not stop llama-server
        for sock in (self.public, self.lane, self.metrics):
            if sock is not None:
                sock.close()
        shutil.rmtree(self.runtime, ignore_errors=True)


def exit_cause(runtime: Path, name: str, code: int | None, when: str) -> str:
    """Why a child stopped, in words: the gate's own report when it left one (llama-server crashed
    with SIGSEGV while loading the model, and its last lines), else the exit code."""
    if name == "gate" and (report := read_report(runtime)) is not None:
        return report
    return f"the {name} process exited with code {code} {when}"


def _probe(client: httpx.Client, url: str) -> dict[str, object] | None:
    try:
        response = client.get(url)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def run(plan: StackPlan) -> int:
    """Start everything, print the ready line, and stop cleanly with 0 on SIGINT or SIGTERM."""
    stack = Stack(plan)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal=%s shutting down", signal.Signals(signum).name)
        stack.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)  # a closed terminal or SSH session stops everything too
    for line in stack.start_lines():
        print(line, file=sys.stderr, flush=True)
    try:
        stack.start_broker()
        stack.start_gate()
        stack.wait_ready()
        if not stack.stopping.is_set():
            print(format_ready_line(stack.ready_url()), flush=True)
            print(STOP_HINT, file=sys.stderr, flush=True)
            stack.supervise()
    except LauncherError as error:
        print(f"llama-direct: error: {error}", file=sys.stderr, flush=True)
        stack.shutdown()
        return 1
    stack.shutdown()
    return 0
