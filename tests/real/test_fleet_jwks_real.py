"""Two `serve` stacks, each broker with keys of its own: gate A pulls broker B's JWKS over TLS.

Broker B serves its public port with a certificate from a private CA (`--tls-cert/--tls-key`); stack
A lists B in `--issuer` and names B's `/.well-known/jwks.json` in `--issuer-jwks`, trusting only
that CA (`--jwks-ca-file`). No shared key file and no Redis: a token B mints verifies at gate A
with the key A pulled from B, for `iss` broker-b only. Both attach to one real llama-server.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from stack import Stack, run_stack
from tls_jwks import make_pki

from broker.signing_keys import SigningKey
from llama_direct.tokens import Grant, mint
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = pytest.mark.real

CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "stream": True, "max_tokens": 8}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _lane(stack: Stack, token: str) -> httpx.Response:
    return httpx.post(f"{stack.base}/direct/v1/chat/completions", json=CHAT, timeout=60, verify=False,
                      headers={"Authorization": f"Bearer {token}"})


def _outcome(response: httpx.Response) -> tuple[int, str | None]:
    return response.status_code, (None if response.status_code == 200 else response.json()["error"]["reason"])


def _signing_key_of(stack: Stack) -> SigningKey:
    """Broker B's current key, read from its data dir: what only someone holding B's files could sign with."""
    (pem,) = [p for p in (stack.data_dir / "keys").glob("*.pem") if not p.name.startswith("tls-")]
    return SigningKey.from_private_key(serialization.load_pem_private_key(pem.read_bytes(), None))


@pytest.fixture
def stacks(llama_server_binary: Path, model_path: Path, tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    pki = make_pki(tmp_path / "pki")
    server = LlamaServer(ServerOptions(binary=llama_server_binary, model=model_path, alias="smollm2", parallel=2),
                         make_runtime_dir())
    with ExitStack() as exits:
        server.start()
        exits.callback(server.stop)
        server.wait_ready(timeout=120, show_progress=False)
        env = {"LLAMA_DIRECT_UPSTREAM_KEY": server.authorization().removeprefix(b"Bearer ").decode()}
        upstream = ("--upstream", f"unix:{server.address}", "--audience", "fleet", "--token-ttl", "60")
        port_b = _free_port()
        # A first: its gate starts before B mints anything, and finds B's server down at its first pull.
        a = exits.enter_context(run_stack(
            *upstream, "--issuer", "broker-a", "--issuer", "broker-b",
            "--issuer-jwks", f"broker-b=https://127.0.0.1:{port_b}/.well-known/jwks.json",
            "--jwks-ca-file", str(pki.ca_file), env=env))
        b = exits.enter_context(run_stack(
            *upstream, "--issuer", "broker-b", "--port", str(port_b),
            "--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file), env=env))
        yield a, b


def test_gate_a_verifies_broker_bs_tokens_with_keys_pulled_over_tls(stacks: tuple[Stack, Stack]) -> None:
    a, b = stacks
    assert "cannot pull" in a.log_text() and f"127.0.0.1:{b.port}" in a.log_text()
    assert ".well-known" not in a.log_text()

    # B is up now: its first token at A names a kid A has not seen; A pulls B's JWKS at once.
    from_b = b.negotiate()["token"]
    assert _outcome(_lane(a, from_b)) == (200, None)
    (source,) = a.gate_health()["jwks"]
    assert (source["issuer"], source["host"], source["ok"], source["keys"]) == ("broker-b", f"127.0.0.1:{b.port}",
                                                                               True, 1)
    assert _outcome(_lane(a, a.negotiate()["token"])) == (200, None)  # A's own broker, as before
    assert _outcome(_lane(b, b.negotiate()["token"])) == (200, None)  # and B's own gate

    # B's key signs for B only: the same key naming broker-a is refused at A; A's key naming broker-b too.
    key_b = _signing_key_of(b)
    grant = Grant(routes=(("POST", "/v1/chat/completions"),), model="smollm2", max_tokens=8)
    as_a = mint(key_b, issuer="broker-a", audience="fleet", subject="mallory", scope="chat", grant=grant,
                now=time.time()).token
    assert _outcome(_lane(a, as_a)) == (401, "wrong_issuer")
    as_b = mint(_signing_key_of(a), issuer="broker-b", audience="fleet", subject="mallory", scope="chat",
                grant=grant, now=time.time()).token
    assert _outcome(_lane(a, as_b)) == (401, "wrong_issuer")
    stranger = mint(SigningKey.generate("EdDSA"), issuer="broker-b", audience="fleet", subject="mallory",
                    scope="chat", grant=grant, now=time.time()).token
    assert _outcome(_lane(a, stranger)) == (401, "unknown_key")

    # B goes away: A keeps B's keys, so a token B minted before still verifies at A.
    late = b.negotiate()["token"]
    b.process.terminate()
    b.process.wait(30)
    time.sleep(1.1)  # past the unknown-kid pull's rate limit, so the next pull meets B down
    assert _outcome(_lane(a, stranger)) == (401, "unknown_key")
    assert _outcome(_lane(a, late)) == (200, None)
    assert a.gate_health()["jwks"][0]["keys"] == 1
    assert "cannot connect; keeping the last 1 keys" in a.log_text()
