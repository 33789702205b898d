"""A `llama-direct serve` stack for the benchmark: attached to an upstream the benchmark started.

The benchmark holds the upstream's key (that is how it measures raw llama-server beside the
lane) and hands it to `serve --upstream` through `LLAMA_DIRECT_UPSTREAM_KEY`, as a user would.

One difference from a user's `serve`, and only one: the broker's per-user rate limit (120 a
minute) is lifted, because the benchmark is one user making thousands of negotiations a minute,
and a 429 would measure the limiter instead of the lane. `python -m llama_launcher.bench.stack`
is `llama-direct serve` with that one setting changed; everything else runs unchanged.
"""

from __future__ import annotations

import re
import secrets
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from llama_launcher.bench.clients import Target
from llama_launcher.bench.processes import Child, child_running

READY = re.compile(r"llama-direct ready: (?P<url>https?://\S+)")
RUNTIME = re.compile(r"runtime dir=(?P<path>\S+)")
UNLIMITED = 10**9
KEY_PULL_WAIT = 1.0


@dataclass
class ServeStack:
    child: Child
    public: tuple[str, int]
    access_token: str
    runtime: Path
    gate_pid: int
    broker_pid: int

    @property
    def public_target(self) -> Target:
        return Target(self.public, "/v1/chat/completions")

    @property
    def gate_socket(self) -> Path:
        return self.runtime / "gate.sock"

    def stop(self) -> None:
        self.child.stop(grace=30.0)


def start_stack(name: str, upstream_socket: Path, upstream_key: str, work: Path, *, alias: str, max_tokens: int,
                timeout: float = 120.0) -> ServeStack:
    """Start serve attached to `upstream_socket`; returns once it is ready and its gate holds the keys.

    The ready line can come a moment before the gate has pulled the broker's public keys, so a
    token minted at once may meet an unknown key; waiting two pull intervals rules that out.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    access = secrets.token_urlsafe(24)
    child = Child.python(
        "serve",
        "llama_launcher.bench.stack",
        ["--port", "0", "--data-dir", str(data_dir), "--upstream", f"unix:{upstream_socket}",
         "--max-tokens", str(max_tokens), "--model-alias", alias],
        work / f"{name}-serve.log",
        env={"LLAMA_DIRECT_UPSTREAM_KEY": upstream_key, "LLAMA_DIRECT_ACCESS_TOKEN": access},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"serve exited early:\n{child.log_tail()}")
        text = child.log_path.read_text(errors="replace")
        ready, runtime = READY.search(text), RUNTIME.search(text)
        if ready and runtime:
            parts = urllib.parse.urlsplit(ready.group("url"))
            assert parts.hostname is not None and parts.port is not None
            time.sleep(KEY_PULL_WAIT)
            return ServeStack(
                child=child,
                public=(parts.hostname, parts.port),
                access_token=access,
                runtime=Path(runtime.group("path")),
                gate_pid=child_running(child.pid, "llama_launcher.gate"),
                broker_pid=child_running(child.pid, "broker"),
            )
        time.sleep(0.05)
    child.stop()
    raise RuntimeError("serve was not ready in time")


def main(argv: list[str] | None = None) -> int:
    from llama_launcher import cli, supervisor

    run = supervisor.run

    def run_unlimited(plan: supervisor.StackPlan) -> int:
        plan.broker_settings.update(rate_per_minute=UNLIMITED, burst=UNLIMITED)
        return run(plan)

    supervisor.run = run_unlimited
    return cli.main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
