"""A whole `serve --upstream` stack in front of a REAL llama-server that the test module starts itself,
with a `Forwarder` between the gate and llama-server: the cost, vision and hostile suites need the
server's pid or its exact input, which the plain `stack` fixture's own child does not show."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import httpx
from forwarder import Forwarder
from stack import Stack, run_stack

from llama_direct.runtime import UPSTREAM_KEY_ENV
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer


@contextlib.contextmanager
def stack_in_front(options: ServerOptions, *serve_args: str, record: bool = False,
                   before: Callable[[LlamaServer, str], None] | None = None,
                   ) -> Iterator[tuple[Stack, Forwarder, LlamaServer]]:
    """llama-server started from `options`, then serve attached to it through a forwarder (`record`:
    keep every byte sent, not just request lines) under its alias; `serve_args` are serve's other
    flags. `before(server, key)` runs once the server is ready, before the stack starts (a router's
    preload). Everything stops on exit."""
    server = LlamaServer(options, make_runtime_dir())
    server.start()
    try:
        server.wait_ready(timeout=120, show_progress=False)
        key = server.authorization().decode().removeprefix("Bearer ")
        if before is not None:
            before(server, key)
        with Forwarder(str(server.address), record=record) as forwarder, run_stack(
            "--upstream", f"http://127.0.0.1:{forwarder.port}", "--model-alias", options.alias, *serve_args,
            env={UPSTREAM_KEY_ENV: key},
        ) as stack:
            yield stack, forwarder, server
    finally:
        server.stop()


def fresh_token(stack: Stack, max_tokens: int, *, within: float = 90) -> str:
    """A fresh chat token for the owner (a refused request spends its token); the broker's rate limit
    is waited out as its `Retry-After` says, off the clock of whatever the test measures."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        response = httpx.post(f"{stack.base}/direct-stream", json={"max_tokens": max_tokens}, timeout=10,
                              headers={"Authorization": f"Bearer {stack.access_token}"})
        if response.status_code == 429:
            time.sleep(float(response.headers.get("retry-after", "1")))
            continue
        assert response.status_code == 200, response.text
        grant = response.json()
        if grant.get("supported"):
            return str(grant["token"])
        time.sleep(0.1)
    raise AssertionError("negotiation never gave a token")
