"""A `llama-direct serve` stack for the benchmark: attached to an upstream the benchmark started.

The benchmark holds the upstream's key (that is how it measures raw llama-server beside the
lane) and hands it to `serve --upstream` through `LLAMA_DIRECT_UPSTREAM_KEY`, as a user would.

One difference from a user's `serve`, and only one: the broker's per-user rate limit (120 a
minute) is lifted, because the benchmark is one user making thousands of negotiations a minute,
and a 429 would measure the limiter instead of the lane. It is lifted with serve's own
`--rate-per-minute` and `--burst`; nothing is patched, everything else runs unchanged.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llama_direct.lanes import CHAT_PATH
from llama_direct.runtime import (
    ACCESS_TOKEN_ENV,
    GATE_SOCKET,
    UPSTREAM_KEY_ENV,
    parse_ready_line,
    parse_runtime_line,
    read_serve_log,
)
from llama_launcher.bench.clients import Target
from llama_launcher.bench.processes import GATE_MODULES, Child, child_running

UNLIMITED = 10**9
"""Rate limits are lifted through serve's own options: the bench measures the lane, not the limiter."""
KEY_PULL_WAIT = 1.0


@dataclass
class ServeStack:
    child: Child
    public: tuple[str, int]
    access_token: str
    runtime: Path
    gate_pid: int
    broker_pid: int
    data_dir: Path

    @property
    def public_target(self) -> Target:
        return Target(self.public, CHAT_PATH)

    @property
    def gate_socket(self) -> Path:
        return self.runtime / GATE_SOCKET

    def stop(self) -> None:
        self.child.stop(grace=30.0)


def start_stack(name: str, upstream_socket: Path | Sequence[Path], upstream_key: str, work: Path, *, alias: str,
                max_tokens: int, timeout: float = 120.0, extra: Sequence[str] = (),
                env: dict[str, str] | None = None, source: Path | None = None) -> ServeStack:
    """Start serve attached to `upstream_socket` (several: one gate routing among them, all with one
    key); returns once it is ready and its gate holds the keys. `extra`: more serve flags, `env` more
    environment (a Redis URL). `source`: another tree of the code (`before.materialise`), whose own
    serve, broker and gate run instead of this one's: it comes first on their `PYTHONPATH` and is
    their working directory, and its children inherit both.

    The ready line can come a moment before the gate has pulled the broker's public keys, so a
    token minted at once may meet an unknown key; waiting two pull intervals rules that out.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    access = secrets.token_urlsafe(24)
    sockets = [upstream_socket] if isinstance(upstream_socket, Path) else list(upstream_socket)
    child = Child.python(
        "serve",
        "llama_launcher.cli",
        ["serve", "--rate-per-minute", str(UNLIMITED), "--burst", str(UNLIMITED),
         "--port", "0", "--data-dir", str(data_dir), *[a for s in sockets for a in ("--upstream", f"unix:{s}")],
         "--max-tokens", str(max_tokens), "--model-alias", alias, *extra],
        work / f"{name}-serve.log",
        env={UPSTREAM_KEY_ENV: upstream_key, ACCESS_TOKEN_ENV: access, **(env or {}),
             **({"PYTHONPATH": str(source)} if source is not None else {})},
        cwd=source,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"serve exited early:\n{child.log_tail()}")
        text = child.log_path.read_text(errors="replace")
        ready, runtime = parse_ready_line(text), parse_runtime_line(text + read_serve_log(data_dir))
        if ready and runtime:
            parts = urllib.parse.urlsplit(ready)
            assert parts.hostname is not None and parts.port is not None
            time.sleep(KEY_PULL_WAIT)
            stack = ServeStack(
                child=child,
                public=(parts.hostname, parts.port),
                access_token=access,
                runtime=runtime.path,
                gate_pid=child_running(child.pid, GATE_MODULES),
                broker_pid=child_running(child.pid, "broker"),
                data_dir=data_dir,
            )
            if source is not None and not _runs_in(source, stack):
                stack.stop()
                raise RuntimeError(f"the {name} stack's broker and gate did not run from {source.name}")
            return stack
        time.sleep(0.05)
    child.stop()
    raise RuntimeError("serve was not ready in time")


def add_user(stack: ServeStack, name: str, *limits: str) -> str:
    """A named user added with `llama-direct users add` on the stack's data dir while it runs, as an owner
    would; their API key. Only this code's stack: REV's may have no named users at all."""
    done = subprocess.run([sys.executable, "-m", "llama_launcher.cli", "users", "add", name, *limits,
                           "--data-dir", str(stack.data_dir)], capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"users add failed: {done.stderr.strip()[-500:]}")
    shown = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    return shown["API key"]


def _runs_in(source: Path, stack: ServeStack) -> bool:
    """Whether the stack's gate and broker run in `source` (their cwd, first on their `sys.path`)."""
    try:
        return all(Path(f"/proc/{pid}/cwd").resolve() == source.resolve()
                   for pid in (stack.gate_pid, stack.broker_pid))
    except OSError:
        return False
