"""Idle CPU of every process of a serve stack, in each mode a user runs (issue 24).

The bench's first idle figure came from a stack attached to the synthetic upstream: a gate that
launches nothing. The default mode is not that: there the gate's main thread supervises
llama-server, and it polled its exit 80 times a second (6 to 7 ms of CPU a second). So each mode
gets its own stack here, started the way a user starts it:

- `launched`: `serve --model FILE`: the gate launches llama-server;
- `router`: `serve --models-preset FILE` with two models, one loaded at a time: the gate launches
  a llama-server router, which starts a child per loaded model;
- `attached`: `serve --upstream unix:SOCKET` to a llama-server started here;
- `fleet`: `launched` with its state in a private redis-server (`LLAMA_DIRECT_REDIS_URL`), as each
  machine of a fleet runs it; redis-server is measured too (its share comes from this broker alone).

Each stack answers one chat first (so a router has a model loaded, and each process has done its
first work), then all of them sit idle together: after `settle` seconds of quiet (a broker polls
its gate fast for a while after a negotiation), `windows` windows of `seconds` each, every process
read from the scheduler's per-thread counters (`processes.thread_cpu_ns`). The figure is the median
window per process, in ms of CPU per second of wall time.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from llama_direct.runtime import ACCESS_TOKEN_ENV, REDIS_URL_ENV, UPSTREAM_KEY_ENV, parse_ready_line
from llama_direct.tokens import LEEWAY_SECONDS
from llama_launcher import model as gguf
from llama_launcher import provision
from llama_launcher.bench.processes import (
    GATE_MODULES,
    Child,
    child_running,
    children,
    thread_cpu_ns,
    wait_for_socket,
)
from llama_launcher.bench.stats import median
from llama_launcher.paths import cache_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

MODES = ("launched", "router", "attached", "fleet")
ROUTER_MODELS = ("alpha", "beta")
LIMIT_MS_PER_S = 1.0
"""Issue 24: no process of an idle stack spends more than this."""
START_TIMEOUT_S = 300.0


@dataclass
class IdleStack:
    """One serve stack and its processes by role: serve, broker, gate, llama-server, model-N."""

    mode: str
    serve: Child
    access_token: str = field(repr=False)
    base: str
    model: str | None
    """The model a router's chat names; None: the stack's one model."""
    pids: dict[str, int] = field(default_factory=dict)
    upstream: LlamaServer | None = None
    """`attached`: the llama-server started here, stopped after the stack."""
    redis: Child | None = None
    """`fleet`: the redis-server started here, stopped after the stack."""

    def stop(self) -> None:
        self.serve.stop(grace=30.0)
        if self.upstream is not None:
            self.upstream.stop()
        if self.redis is not None:
            self.redis.stop()


def family(serve_pid: int) -> dict[str, int]:
    """serve's processes by role; a router's children (one per loaded model) as `model-1`, ...."""
    gate = child_running(serve_pid, GATE_MODULES)
    found = {"serve": serve_pid, "broker": child_running(serve_pid, "broker"), "gate": gate}
    for pid in children(gate):
        found["llama-server"] = pid
        for index, model in enumerate(sorted(children(pid)), start=1):
            found[f"model-{index}"] = model
    return found


def start(mode: str, work: Path, *, binary: Path, model: Path, source: Path | None = None) -> IdleStack:
    """The stack for `mode`, ready and answered once (`source`: another tree of the code, as `--before`)."""
    runtime = Path(tempfile.mkdtemp(prefix=f"idle-{mode}-", dir=work))
    env: dict[str, str] = {}
    upstream = redis = None
    name: str | None
    chat_after = 0.0
    if mode == "fleet":
        redis, env[REDIS_URL_ENV] = start_redis(runtime)
        # A gate refuses tokens issued in the leeway after Redis's start (docs/fleet.md): chat after it.
        chat_after = time.monotonic() + LEEWAY_SECONDS + 1
    if mode in ("launched", "fleet"):
        args, name = ["--llama-server", str(binary), "--model", str(model)], None
    elif mode == "router":
        preset = runtime / "models.ini"
        preset.write_text("".join(f"[{alias}]\nmodel = {model}\nctx-size = 1024\n\n" for alias in ROUTER_MODELS))
        args = ["--llama-server", str(binary), "--models-preset", str(preset), "--models-max", "1"]
        name = ROUTER_MODELS[0]
    elif mode == "attached":
        upstream = LlamaServer(ServerOptions(binary=binary, model=model, alias="attached"), runtime, listen="unix")
        upstream.start()
        try:
            upstream.wait_ready(timeout=START_TIMEOUT_S, show_progress=False)
        except BaseException:
            upstream.stop()
            raise
        env[UPSTREAM_KEY_ENV] = upstream.authorization().decode().removeprefix("Bearer ")
        args, name = ["--upstream", f"unix:{upstream.socket_path}"], None
    else:
        raise ValueError(f"no idle mode {mode!r}; one of {', '.join(MODES)}")
    access = env[ACCESS_TOKEN_ENV] = secrets.token_urlsafe(24)
    serve = Child.python(
        f"serve-{mode}", "llama_launcher.cli",
        ["serve", "--port", "0", "--data-dir", str(runtime / "data"), *args], runtime / "serve.log",
        env={**env, **({"PYTHONPATH": str(source)} if source is not None else {})}, cwd=source)
    stack = IdleStack(mode, serve, access, "", name, upstream=upstream, redis=redis)
    try:
        stack.base = _wait_ready(serve)
        time.sleep(max(0.0, chat_after - time.monotonic()))
        chat_once(stack)
        stack.pids = family(serve.pid) | ({"redis-server": redis.pid} if redis is not None else {})
    except BaseException:
        stack.stop()
        raise
    return stack


def start_redis(runtime: Path) -> tuple[Child, str]:
    """A private redis-server on a unix socket in `runtime`, without persistence, and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("the fleet mode needs redis-server (apt-get install redis-server)")
    path = runtime / "redis.sock"
    # `--hz 1`: at its default 10 Hz timer an idle redis-server with no client at all spends about
    # 1.9 ms of CPU a second on this box (0.2 to 0.4 at 1 Hz), which would hide what the stack adds.
    redis = Child("redis-server", [binary, "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700",
                                   "--save", "", "--appendonly", "no", "--hz", "1", "--dir", str(runtime)],
                  runtime / "redis.log")
    try:
        wait_for_socket(path, redis)
    except BaseException:
        redis.stop()
        raise
    return redis, f"unix://{path}"


def _wait_ready(serve: Child) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not serve.alive():
            raise RuntimeError(f"{serve.name} exited early:\n{serve.log_tail()}")
        ready = parse_ready_line(serve.log_path.read_text(errors="replace"))
        if ready:
            parts = urllib.parse.urlsplit(ready)
            return f"{parts.scheme}://{parts.netloc}"
        time.sleep(0.1)
    raise RuntimeError(f"{serve.name} was not ready within {START_TIMEOUT_S:.0f} s:\n{serve.log_tail()}")


def chat_once(stack: IdleStack) -> None:
    """One negotiation and a one-token chat through the lane: a router loads its first model."""
    with httpx.Client(timeout=120.0) as client:
        asked = {"model": stack.model, "autoload": True} if stack.model else None
        answer = client.post(f"{stack.base}/direct-stream", json=asked,
                             headers={"Authorization": f"Bearer {stack.access_token}"})
        if answer.status_code != 200:
            raise RuntimeError(f"{stack.mode}: negotiation answered {answer.status_code}: {answer.text[:200]}")
        grant = answer.json()
        headers = {"Authorization": f"Bearer {grant['token']}"}
        if grant.get("conversation_id"):
            headers["X-Conversation-Id"] = grant["conversation_id"]
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": False}
        chat = client.post(grant["url"] + "/v1/chat/completions", json=body, headers=headers)
        if chat.status_code != 200:
            raise RuntimeError(f"{stack.mode}: the chat answered {chat.status_code}: {chat.text[:200]}")


K = TypeVar("K", bound=Hashable)


def window(pids: dict[K, int], seconds: float) -> dict[K, float]:
    """Each process's CPU over one window of `seconds`, in ms per second of wall time."""
    before, started = {name: thread_cpu_ns(pid) for name, pid in pids.items()}, time.perf_counter()
    time.sleep(seconds)
    after, wall = {name: thread_cpu_ns(pid) for name, pid in pids.items()}, time.perf_counter() - started
    return {name: (after[name] - before[name]) / 1e6 / wall for name in pids}


def measure(stacks: dict[str, IdleStack], *, settle: float, seconds: float, windows: int) -> dict[str, Any]:
    """Every stack idle in the same windows; per label, each process's median window in ms/s."""
    time.sleep(settle)
    pids = {(label, name): pid for label, stack in stacks.items() for name, pid in stack.pids.items()}
    found = [window(pids, seconds) for _ in range(windows)]
    per_label: dict[str, dict[str, float]] = {label: {} for label in stacks}
    for label, name in pids:
        per_label[label][name] = median([w[(label, name)] for w in found])
    return {"settle_s": settle, "window_s": seconds, "windows": windows, "ms_per_s": per_label,
            "limit_ms_per_s": LIMIT_MS_PER_S}


def run_modes(work: Path, *, settle: float, seconds: float, windows: int, modes: Sequence[str] = MODES,
              before: Path | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Start a stack per mode (and per mode one of the code at `before`, labelled `before:MODE`),
    measure them idle together, stop them all. The binary and the model are the user's cached ones."""
    binary = provision.ensure_llama_server(None, cache_dir()).path
    model = gguf.ensure_default_model(cache_dir())
    stacks: dict[str, IdleStack] = {}
    try:
        for mode in modes:
            for label, source in ((mode, None), *([(f"before:{mode}", before)] if before else [])):
                say(f"idle: starting the {label} stack")
                stacks[label] = start(mode, work, binary=binary, model=model, source=source)
        say(f"idle: {settle:.0f} s of quiet, then {windows} window(s) of {seconds:.0f} s")
        return measure(stacks, settle=settle, seconds=seconds, windows=windows)
    finally:
        for stack in stacks.values():
            stack.stop()


def render(found: dict[str, Any]) -> list[str]:
    """The markdown table: a row per mode, a column per process role."""
    per_mode: dict[str, dict[str, float]] = found.get("ms_per_s", {})
    if not per_mode:
        return []
    roles = ["serve", "broker", "gate", "llama-server"]
    roles += sorted({name for names in per_mode.values() for name in names} - set(roles))
    lines = [f"Idle CPU per process (ms of CPU per second; median of {found['windows']} window(s) of "
             f"{found['window_s']:g} s after {found['settle_s']:g} s of quiet; target ≤ "
             f"{found['limit_ms_per_s']:g} ms/s each):", "",
             "| mode | " + " | ".join(roles) + " |", "|---|" + "---:|" * len(roles)]
    for mode, names in per_mode.items():
        cells = [f"{names[role]:.3f}" if role in names else "–" for role in roles]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def over_limit(found: dict[str, Any]) -> list[str]:
    """`mode/process` for each process of this code's stacks above the limit (the code at `--before`
    is measured, not judged); empty when every stack is idle everywhere."""
    limit = found.get("limit_ms_per_s", LIMIT_MS_PER_S)
    return [f"{mode}/{name}" for mode, names in found.get("ms_per_s", {}).items() if not mode.startswith("before:")
            for name, ms in names.items() if ms > limit]


def _command_line(argv: Sequence[str]) -> int:
    """`python -m llama_launcher.bench.idle [MODE ...]`: the per-mode table alone, in about two minutes."""
    with tempfile.TemporaryDirectory(prefix="ldi-") as work:
        found = run_modes(Path(work), settle=30.0, seconds=15.0, windows=1, modes=list(argv) or MODES)
    print("\n".join(render(found)))
    return 1 if over_limit(found) else 0


if __name__ == "__main__":
    import sys

    sys.exit(_command_line(sys.argv[1:]))
