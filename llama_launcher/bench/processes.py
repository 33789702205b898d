"""The processes a benchmark starts, and what `/proc` says about them (CPU time, RSS, children).

The `/proc` readers and `stop_process` are also what the real tests and the leak scan use to find
and end a serve stack's family: one copy of each.

Everything started here dies with the benchmark: each child is spawned with `PR_SET_PDEATHSIG`,
in its own session, and `Child.stop` ends it (SIGTERM, then SIGKILL) by its own pid only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PR_SET_PDEATHSIG = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


KEY_ENV = "BENCH_UPSTREAM_KEY"
"""How the benchmark hands its upstream's key to the processes it starts: never on argv."""


def take_upstream_key(prog: str) -> str | None:
    """The key from the environment, removed from it at once; None (said on stderr) when absent."""
    key = os.environ.pop(KEY_ENV, "")
    if not key:
        print(f"{prog}: the key must be in the environment", file=sys.stderr)
    return key or None


def raise_fd_limit() -> int:
    """Each held stream costs a descriptor per side; lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed, as the gate does."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class Child:
    """One helper process (`python -m MODULE ARGS`), its output in a log file, stopped by its pid."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        parent = os.getpid()
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                pass_fds=tuple(pass_fds),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=lambda: _die_with_parent(parent),
            )

    @classmethod
    def python(cls, name: str, module: str, args: Sequence[str], log_path: Path, **kwargs: Any) -> Child:
        return cls(name, [sys.executable, "-m", module, *args], log_path, **kwargs)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 15.0) -> None:
        stop_process(self.process, grace)


def stop_process(process: subprocess.Popen[bytes], grace: float, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: the process alone, or (`group`) the process group
    it leads, for a child started in its own session whose children must not outlive it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL each pid still there: what is left of a family after its parent stopped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a whole process (all its threads), from /proc/<pid>/stat."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident set size in KiB, from /proc/<pid>/status (`VmRSS`)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS line")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _stat_fields(pid: int | str) -> list[str]:
    """`/proc/<pid>/stat` after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def state(pid: int) -> str:
    """The process's state letter (`Z` for a zombie), or "gone"."""
    try:
        return _stat_fields(pid)[0]
    except (OSError, IndexError):
        return "gone"


def alive(pid: int) -> bool:
    return state(pid) not in ("gone", "Z")


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(_stat_fields(entry)[1]) == pid:
                found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    """Children, grandchildren and so on, as they are now."""
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


GATE_MODULES = ("llama_launcher.gate_process", "llama_launcher.gate")
"""The gate process's module, and its name before issue 26 (what `bench --before REV` may run)."""


def child_running(pid: int, module: str | tuple[str, ...], timeout: float = 30.0) -> int:
    """The child of `pid` whose command line runs `-m module` (serve's gate or broker; any of several
    names, for a module that was renamed since a revision the bench runs)."""
    names = (module,) if isinstance(module, str) else module
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children(pid):
            argv = cmdline(child)
            if "-m" in argv and any(name in argv for name in names):
                return child
        time.sleep(0.05)
    raise RuntimeError(f"no child running -m {' or '.join(names)}")


def _wait_listening(probe: Callable[[], None], child: Child, timeout: float) -> None:
    """Until `probe` connects, failing early with the child's log if it died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        try:
            probe()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{child.name} did not listen within {timeout:.0f} s")


def wait_for_socket(path: Path, child: Child, timeout: float = 30.0) -> None:
    def probe() -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))

    _wait_listening(probe, child, timeout)


def wait_for_port(port: int, child: Child, timeout: float = 30.0) -> None:
    def probe() -> None:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    _wait_listening(probe, child, timeout)


def listening_socket() -> tuple[socket.socket, int]:
    """A bound loopback listener to hand to a child by fd, so no port is chosen then raced for."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock, sock.getsockname()[1]


def thread_cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every live thread of `pid`, from `/proc/PID/task/*/schedstat`.

    The scheduler's own counter, exact to the nanosecond: `/proc/PID/stat`'s utime and stime are
    clock ticks (10 ms here), far too coarse for a figure of a fraction of a millisecond per request.
    A thread that ended between two readings drops out of the sum; the gate and the broker run
    their requests on the event loop's thread, which never ends while they serve.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total
