"""A test bed: one upstream (real llama-server or synthetic) with every lane in front of it.

The lanes, all measured against the same upstream in the same run:

- `raw`: the upstream itself, over its unix socket, with the master key (ratio 1.0);
- `direct`: the gate's public port, after `POST /direct-stream` for each request;
- `baseline`: the broker's `/v1/chat/completions` on the same port (broker, then gate);
- `studio`: the Studio-style FastAPI + httpx proxy;
- `relay`: a bare asyncio relay, the floor that any extra hop pays;
- `before` (with `bench --before REV`): the lane through the code as it was at REV, its own serve
  stack (broker and gate) in front of the same upstream, negotiated as `direct` is.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from llama_launcher import model, provision
from llama_launcher.bench.clients import Target
from llama_launcher.bench.processes import KEY_ENV, Child, listening_socket, wait_for_port, wait_for_socket
from llama_launcher.bench.stack import ServeStack, start_stack
from llama_launcher.paths import cache_dir
from llama_launcher.server_args import RouterSource, ServerOptions
from llama_launcher.server_process import LlamaServer

LANES = ("raw", "direct", "baseline", "studio", "relay")
REAL_ALIAS = "smollm2"
REAL_SLOTS = 64
REAL_CTX_PER_SLOT = 256
SYNTHETIC_ALIAS = "synthetic"
ROUTER_MODELS = ("alpha", "beta")
"""The router bed's two names for the same SmolLM2 file; `--models-max 1` keeps one loaded."""


@dataclass
class Bed:
    name: str
    upstream_socket: Path
    key: str = field(repr=False)
    upstream_pid: int
    stack: ServeStack
    studio: Child
    studio_port: int
    relay: Child
    relay_port: int
    stop_upstream: object
    before: ServeStack | None = None
    """The stack of the code at `bench --before REV`, when asked for."""
    budgeted: str | None = None
    """The API key of a user with a token budget on this code's stack (`request_cost.budgeted_user`),
    once added: the `budgeted` lane negotiates with it, so each grant reserves and each end settles."""

    def pids(self) -> dict[str, int]:
        found = {
            "upstream": self.upstream_pid,
            "gate": self.stack.gate_pid,
            "broker": self.stack.broker_pid,
            "studio": self.studio.pid,
            "relay": self.relay.pid,
        }
        if self.before is not None:
            found.update(before_gate=self.before.gate_pid, before_broker=self.before.broker_pid)
        return found

    def stack_for(self, lane: str) -> ServeStack:
        """The serve stack a negotiated lane goes through: this code's (`direct`, `budgeted`) or REV's
        (`before`)."""
        if lane == "before":
            if self.before is None:
                raise ValueError("no before stack in this run (bench --before REV)")
            return self.before
        return self.stack

    def target(self, lane: str) -> Target:
        chat = "/v1/chat/completions"
        if lane == "raw":
            return Target(str(self.upstream_socket), chat)
        if lane == "baseline":
            return Target(self.stack.public, chat)
        if lane == "studio":
            return Target(("127.0.0.1", self.studio_port), chat)
        if lane == "relay":
            return Target(("127.0.0.1", self.relay_port), chat)
        raise ValueError(f"the {lane} lane's target comes from a negotiation")

    def authorization(self, lane: str) -> str | None:
        if lane in ("raw", "relay"):
            return f"Bearer {self.key}"
        if lane == "baseline":
            return f"Bearer {self.stack.access_token}"
        return None

    def stop(self) -> None:
        steps = (self.stack.stop, *([self.before.stop] if self.before else []), self.studio.stop, self.relay.stop,
                 self.stop_upstream)
        for step in steps:
            step()  # type: ignore[operator]  # stop_upstream is set once the bed is built


def _front(name: str, socket_path: Path, key: str, upstream_pid: int, stop_upstream: object, work: Path,
           *, alias: str, max_tokens: int, before: Path | None = None) -> Bed:
    started: list[object] = []
    try:
        studio_sock, studio_port = listening_socket()
        studio = Child.python("studio", "llama_launcher.bench.studio_proxy",
                              ["--fd", str(studio_sock.fileno()), "--upstream", str(socket_path)],
                              work / f"{name}-studio.log", env={KEY_ENV: key}, pass_fds=(studio_sock.fileno(),))
        studio_sock.close()
        started.append(studio.stop)
        relay_sock, relay_port = listening_socket()
        relay = Child.python("relay", "llama_launcher.bench.relay",
                             ["--fd", str(relay_sock.fileno()), "--upstream", str(socket_path)],
                             work / f"{name}-relay.log", pass_fds=(relay_sock.fileno(),))
        relay_sock.close()
        started.append(relay.stop)
        stack = start_stack(name, socket_path, key, work, alias=alias, max_tokens=max_tokens)
        started.append(stack.stop)
        old = None
        if before is not None:
            old = start_stack(f"{name}-before", socket_path, key, work, alias=alias, max_tokens=max_tokens,
                              source=before)
            started.append(old.stop)
        wait_for_port(studio_port, studio)
        wait_for_port(relay_port, relay)
    except BaseException:
        for stop in reversed(started):
            stop()  # type: ignore[operator]  # only what was started is in `started`
        raise
    return Bed(name, socket_path, key, upstream_pid, stack, studio, studio_port, relay, relay_port, stop_upstream, old)


def synthetic_bed(work: Path, *, max_tokens: int, before: Path | None = None) -> Bed:
    """The synthetic upstream at full speed, and the lanes in front of it."""
    key = secrets.token_urlsafe(32)
    socket_path = work / "synthetic.sock"
    upstream = Child.python("synthetic", "llama_launcher.bench.synthetic", ["--socket", str(socket_path)],
                            work / "synthetic.log", env={KEY_ENV: key})
    try:
        wait_for_socket(socket_path, upstream)
        return _front("synthetic", socket_path, key, upstream.pid, upstream.stop, work, alias=SYNTHETIC_ALIAS,
                      max_tokens=max_tokens, before=before)
    except BaseException:
        upstream.stop()
        raise


def real_bed(work: Path, *, max_tokens: int, router: bool = False, before: Path | None = None) -> Bed:
    """A real llama-server with SmolLM2, started here so that the benchmark holds its key.

    `router`: llama-server's router over two presets of the same file (`ROUTER_MODELS`), one loaded
    at a time, so that switching costs a load; the lanes attach to it as to any router.
    """
    cache = cache_dir()
    name = "router" if router else "real"
    runtime = work / name
    runtime.mkdir(mode=0o700)
    gguf = model.ensure_default_model(cache)
    source = None
    if router:
        preset = runtime / "models.ini"
        preset.write_text("".join(f"[{alias}]\nmodel = {gguf}\n\n" for alias in ROUTER_MODELS))
        source = RouterSource("preset", preset)
    options = ServerOptions(
        binary=provision.ensure_llama_server(None, cache).path,
        model=gguf,
        alias=REAL_ALIAS,
        max_tokens=max_tokens,
        parallel=REAL_SLOTS,
        ctx_size=REAL_SLOTS * REAL_CTX_PER_SLOT,
        extra_args=("--models-max", "1") if router else (),
        router=source,
    )
    server = LlamaServer(options, runtime, listen="unix")
    server.start()
    try:
        server.wait_ready(timeout=300, show_progress=False)
        key = server.authorization().decode().removeprefix("Bearer ")
        assert server.pid is not None
        return _front(name, server.socket_path, key, server.pid, server.stop, work,
                      alias=ROUTER_MODELS[0] if router else REAL_ALIAS, max_tokens=max_tokens, before=before)
    except BaseException:
        server.stop()
        raise
