"""A fleet for real tests: `serve` stacks that share one audience, one signing key and one private Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from forwarder import Forwarder
from redis_server import RedisServer
from stack import Stack, run_stack

from llama_direct.runtime import REDIS_URL_ENV, UPSTREAM_KEY_ENV
from llama_direct.tokens import LEEWAY_SECONDS
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer


def signing_key_file(directory: Path) -> Path:
    """A fresh ES256 key as `--signing-key-file` takes it (0600): every broker of the fleet signs with it."""
    path = directory / "signing-key.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def wait_out_redis_start(redis: RedisServer) -> None:
    """Tokens minted in the first seconds of Redis's run are refused (it might have lost a spent one)."""
    time.sleep(max(0.0, LEEWAY_SECONDS + 2 - (time.monotonic() - redis.started)))


@contextmanager
def one_server_two_brokers(binary: Path, model: Path, workdir: Path, *serve_args: str,
                           parallel: int = 1) -> Iterator[tuple[Stack, Stack, Forwarder, RedisServer]]:
    """A private Redis, one llama-server (`smollm2`) behind a counting forwarder, and two stacks attached
    to it: brokers `broker-a` and `broker-b`, one audience (`fleet`), one signing key, each accepting
    the other's tokens; `serve_args` go to both. Yielded once Redis's first seconds are past; all
    stops on exit."""
    redis = RedisServer(workdir)
    redis.start()
    server = LlamaServer(ServerOptions(binary=binary, model=model, alias="smollm2", parallel=parallel),
                         make_runtime_dir())
    with ExitStack() as exits:
        exits.callback(redis.stop)
        server.start()
        exits.callback(server.stop)
        server.wait_ready(timeout=120, show_progress=False)
        env = {UPSTREAM_KEY_ENV: server.authorization().removeprefix(b"Bearer ").decode(), REDIS_URL_ENV: redis.url}
        upstream = exits.enter_context(Forwarder(server.address))  # type: ignore[arg-type]  # a unix socket path here
        common = ("--upstream", f"http://127.0.0.1:{upstream.port}", "--audience", "fleet",
                  "--signing-key-file", str(signing_key_file(workdir)), *serve_args)
        a = exits.enter_context(run_stack(*common, "--issuer", "broker-a", "--issuer", "broker-b", env=env))
        b = exits.enter_context(run_stack(*common, "--issuer", "broker-b", "--issuer", "broker-a", env=env))
        wait_out_redis_start(redis)
        yield a, b, upstream, redis
