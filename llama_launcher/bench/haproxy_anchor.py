"""The anchor row (issue 18): Debian's HAProxy 2.6 in the gate's place, beside the Python gate, in one run.

HAProxy runs `llama-direct haproxy-config`'s "gate" shape (`haproxy_config.render`) in front of the
same synthetic upstream as the Python gate, over the same unix socket, with the upstream's key in
its environment only. It verifies ES256 tokens (HAProxy 2.6 cannot verify EdDSA) signed by a key
made here for the run, with the same `aud`/`iss`, expiry, scope, route, model, length and
single-use checks as in production; it does no body shaping. The tokens are minted before each
request's clock starts, as the direct lane's are negotiated before it, and its requests carry
`model` (HAProxy cannot add a missing one).

`scenarios.first_token` drives it as one more interleaved lane, `haproxy`, and reads its CPU from
the HAProxy process's per-thread counters as it reads the gate's; `summary.anchor` lines the two up.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from broker.signing_keys import SigningKey
from llama_direct.lanes import CHAT_PATH, CHAT_ROUTE, LANE_PREFIX
from llama_direct.tokens import Grant, mint
from llama_launcher.bench.clients import Target
from llama_launcher.bench.processes import Child, wait_for_port
from llama_launcher.haproxy_config import HaproxyPlan, render

LANE = "haproxy"
AUDIENCE = "bench-haproxy"
ISSUER = "bench"
NOT_INSTALLED = "haproxy is not installed (apt-get install haproxy): no HAProxy anchor row"


@dataclass
class Anchor:
    """A running HAProxy in the gate's place, and what a request through it needs."""

    child: Child
    port: int
    key: SigningKey
    model: str
    cap: int

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def target(self) -> Target:
        return Target(("127.0.0.1", self.port), LANE_PREFIX + CHAT_PATH)

    def authorization(self, now: float | None = None) -> str:
        """A fresh single-use token, as the broker would mint it for this model and cap."""
        grant = Grant(routes=(CHAT_ROUTE,), model=self.model, max_tokens=self.cap)
        minted = mint(self.key, issuer=ISSUER, audience=AUDIENCE, subject="bench", scope="chat", grant=grant,
                      now=time.time() if now is None else now)
        return f"Bearer {minted.token}"

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The lane's request as HAProxy needs it: with `model`."""
        return {**body, "model": self.model}

    def stop(self) -> None:
        self.child.stop(grace=5.0)


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (str(Path("/usr/sbin/haproxy")) if Path("/usr/sbin/haproxy").exists() else None)


def config_for(upstream_socket: Path, port: int, public_key_file: Path) -> str:
    """The gate-shaped config in front of the upstream's unix socket."""
    return render(HaproxyPlan(bind=f"127.0.0.1:{port}", upstreams=(f"unix@{upstream_socket}",),
                              public_keys=(str(public_key_file),), audience=AUDIENCE, issuers=(ISSUER,)))


def start_anchor(upstream_socket: Path, upstream_key: str, work: Path, *, model: str, cap: int) -> Anchor | None:
    """HAProxy listening on loopback in front of `upstream_socket`; None when haproxy is not installed."""
    binary = haproxy_binary()
    if binary is None:
        return None
    key = SigningKey.generate("ES256")
    public_key = work / "haproxy-broker-public.pem"
    public_key.write_bytes(key.public_key.public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    port = _free_port()
    config = work / "haproxy.cfg"
    config.write_text(config_for(upstream_socket, port, public_key))
    child = Child(LANE, [binary, "-db", "-f", str(config)], work / "haproxy.log", env={"LLAMA_API_KEY": upstream_key})
    try:
        wait_for_port(port, child)
    except BaseException:
        child.stop(grace=5.0)
        raise
    return Anchor(child, port, key, model, cap)


def _free_port() -> int:
    """HAProxy binds its own port (the config names it), so one is picked here and released first."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
