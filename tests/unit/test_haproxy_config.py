"""`llama-direct haproxy-config`: both shapes render, `haproxy -c` accepts them, no secret is written;
and the gate believes X-Forwarded-For only from a trusted proxy."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from gate_fakes import Client, running_gate

from llama_launcher.haproxy_config import HaproxyPlan, Peer, render

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def _public_key(tmp_path: Path) -> Path:
    path = tmp_path / "public.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _valid(config: str, tmp_path: Path) -> None:
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    checked = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True,
                             env={"LLAMA_API_KEY": "key-from-the-environment"})
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_edge_balances_by_least_connections_checks_health_and_sets_forwarding(tmp_path: Path) -> None:
    config = render(HaproxyPlan(bind="0.0.0.0:8443", gates=("10.0.0.1:8000", "10.0.0.2:8000")))
    assert "balance leastconn" in config and "option forwardfor" in config
    assert "http-request del-header X-Forwarded-For" in config
    assert config.count(" check ") == 2 and "option httpchk" in config
    assert "\n    compression" not in config and "http-buffer-request" not in config
    _valid(config, tmp_path)


def test_the_gates_place_checks_the_token_and_never_holds_the_key(tmp_path: Path) -> None:
    key = _public_key(tmp_path)
    config = render(HaproxyPlan(bind="127.0.0.1:8443", upstreams=("127.0.0.1:9001", "127.0.0.1:9002"),
                                app="127.0.0.1:8000", public_keys=(str(key),), audience="fleet",
                                issuers=("broker-a", "broker-b"), peers=(Peer("hap1", "127.0.0.1:10001"),
                                                                        Peer("hap2", "10.0.0.2:10001")),
                                local_peer="hap1"))
    for needle in ("jwt_verify(txn.alg", "-m str ES256", "$.aud", "$.iss", "$.exp", "$.nbf", "$.grant.max_tokens",
                   "$.grant.conversation_id", "x-conversation-id", "json_query('$.max_tokens','int')",
                   "json_query('$.n_predict','int')", "track-sc0 var(txn.jti)", "peers lane_peers",
                   '"Bearer ${LLAMA_API_KEY}"', "method POST"):
        assert needle in config, needle
    _valid(config, tmp_path)


@pytest.mark.parametrize("plan", [
    HaproxyPlan(bind="127.0.0.1:1"),
    HaproxyPlan(bind="127.0.0.1:1", gates=("a:1",), upstreams=("b:2",)),
    HaproxyPlan(bind="127.0.0.1:1", upstreams=("b:2",)),
    HaproxyPlan(bind="127.0.0.1:1", upstreams=("b:2",), public_keys=("/k.pem",), audience="a b", issuers=("i",)),
    HaproxyPlan(bind="127.0.0.1:1", upstreams=("b:2",), public_keys=("rel.pem",), audience="a", issuers=("i",)),
    HaproxyPlan(bind="127.0.0.1:1 ssl", gates=("a:1",)),
    HaproxyPlan(bind="127.0.0.1:1", upstreams=("unix@relative.sock",), public_keys=("/k.pem",), audience="a",
                issuers=("i",)),
    HaproxyPlan(bind="127.0.0.1:1", upstreams=("unix@/a b.sock",), public_keys=("/k.pem",), audience="a",
                issuers=("i",)),
    HaproxyPlan(bind="127.0.0.1:1", gates=("unix@/gate.sock",)),
])
def test_a_plan_that_would_need_escaping_or_misses_a_part_is_refused(plan: HaproxyPlan) -> None:
    with pytest.raises(ValueError):
        render(plan)


def test_an_upstream_may_be_a_unix_socket_as_serve_runs_llama_server(tmp_path: Path) -> None:
    key = _public_key(tmp_path)
    config = render(HaproxyPlan(bind="127.0.0.1:8443", upstreams=("unix@/run/llama/llama.sock",),
                                public_keys=(str(key),), audience="fleet", issuers=("broker-a",)))
    assert "    server llama1 unix@/run/llama/llama.sock check inter 2s fall 2 rise 2" in config
    _valid(config, tmp_path)


def test_the_command_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "edge.cfg"
    done = subprocess.run([sys.executable, "-m", "llama_launcher.cli", "haproxy-config", "--gate", "127.0.0.1:8000",
                           "--output", str(out)], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert "backend gates" in out.read_text()


@pytest.mark.parametrize(("trusted", "expected"), [([], "127.0.0.1"), (["127.0.0.1"], "203.0.113.9")])
def test_forwarding_headers_are_believed_only_from_a_trusted_proxy(trusted: list[str], expected: str) -> None:
    async def main() -> None:
        async with running_gate(trusted_proxies=trusted) as h:
            client = await Client.open(h.port)
            try:
                await client.send(b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.9\r\n"
                                  b"X-Forwarded-Proto: https\r\n\r\n")
                headers = dict((await client.response()).json()["headers"])
            finally:
                client.close()
            assert headers["X-Forwarded-For"] == expected
            assert headers["X-Forwarded-Proto"] == ("https" if trusted else "http")

    asyncio.run(asyncio.wait_for(main(), 20))


def _section(config: str, name: str) -> list[str]:
    """The lines of one section (`frontend public`, `backend model1`), stripped."""
    lines = config.splitlines()
    start = lines.index(name)
    body = []
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):
            break
        body.append(line.strip())
    return [line for line in body if line]


def _servers(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith("server ")]


def test_the_edge_routes_each_model_to_the_gates_that_serve_it(tmp_path: Path) -> None:
    config = render(HaproxyPlan(bind="127.0.0.1:8443", gates=("10.0.0.1:8000=alpha", "10.0.0.2:8000=beta,org/gamma",
                                                              "10.0.0.3:8000")))
    front = _section(config, "frontend public")
    assert "use_backend model1 if { var(txn.model) -m str alpha }" in front
    assert "use_backend model2 if { var(txn.model) -m str beta }" in front
    assert "use_backend model3 if { var(txn.model) -m str org/gamma }" in front
    assert front[-1] == "default_backend gates"
    # The lane's model is the token's claim; the negotiation's and the baseline's, the body's.
    assert any("http_auth_bearer,jwt_payload_query('$.grant.model') if on_lane" in line for line in front)
    assert any("req.body,json_query('$.model') if METH_POST negotiation || METH_POST baseline" in line
               for line in front)
    assert any(line.startswith("http-request wait-for-body") for line in front)
    assert "option http-buffer-request" not in config  # a lane body streams through
    # A gate without a list serves any model; every gate keeps one id in every backend.
    assert _servers(_section(config, "backend model1")) == ["gate1", "gate3"]
    assert _servers(_section(config, "backend model2")) == ["gate2", "gate3"]
    assert _servers(_section(config, "backend gates")) == ["gate1", "gate2", "gate3"]
    assert "server gate3 10.0.0.3:8000 id 3 track gates/gate3" in _section(config, "backend model3")
    # Resume and cancel go where the conversation was negotiated, in every backend.
    for backend in ("backend gates", "backend model1", "backend model2", "backend model3"):
        lines = _section(config, backend)
        assert "stick match var(txn.conversation) table conversations" in lines
        assert any(line.startswith("stick store-response res.hdr(x-conversation-id)") for line in lines)
    assert any("jwt_payload_query('$.grant.conversation_id')" in line for line in front)
    assert any("json_query('$.resume')" in line for line in front)
    assert any("url_param(cancel)" in line for line in front)
    _valid(config, tmp_path)


def test_two_edges_share_the_conversation_table_through_peers(tmp_path: Path) -> None:
    """With two HAProxies at the edge, a resume that reaches the other one still finds its gate."""
    plan = HaproxyPlan(bind="127.0.0.1:8443", gates=("10.0.0.1:8000=alpha", "10.0.0.2:8000=beta"),
                       peers=(Peer("hap1", "127.0.0.1:10000"), Peer("hap2", "10.0.0.6:10000")), local_peer="hap1")
    config = render(plan)
    assert _section(config, "peers lane_peers") == ["peer hap1 127.0.0.1:10000", "peer hap2 10.0.0.6:10000"]
    assert "localpeer hap1" in _section(config, "global")
    assert _section(config, "backend conversations")[0].endswith("expire 3600s peers lane_peers")
    _valid(config, tmp_path)
    alone = render(HaproxyPlan(bind="127.0.0.1:8443", gates=("10.0.0.1:8000=alpha", "10.0.0.2:8000=beta")))
    assert "peers" not in alone and "localpeer" not in alone
    with pytest.raises(ValueError, match="routing by model"):  # nothing to share without model lists
        render(HaproxyPlan(bind="127.0.0.1:8443", gates=("10.0.0.1:8000",), peers=plan.peers, local_peer="hap1"))
    with pytest.raises(ValueError, match="--local-peer"):
        render(HaproxyPlan(bind="127.0.0.1:8443", gates=plan.gates, peers=plan.peers, local_peer="hap9"))


def test_an_edge_without_model_lists_stays_as_it_was(tmp_path: Path) -> None:
    config = render(HaproxyPlan(bind="127.0.0.1:8443", gates=("10.0.0.1:8000", "10.0.0.2:8000")))
    assert "use_backend" not in config and "stick" not in config and "wait-for-body" not in config


def test_in_the_gates_place_the_grants_model_picks_the_upstreams(tmp_path: Path) -> None:
    key = _public_key(tmp_path)
    config = render(HaproxyPlan(bind="127.0.0.1:8443", upstreams=("127.0.0.1:9001=alpha", "unix@/run/b.sock=beta",
                                                                  "127.0.0.1:9003"),
                                app="127.0.0.1:8000", public_keys=(str(key),), audience="fleet", issuers=("a",)))
    front = _section(config, "frontend public")
    assert "use_backend lane1 if on_lane { var(txn.lane_model) -m str alpha }" in front
    assert "use_backend lane2 if on_lane { var(txn.lane_model) -m str beta }" in front
    assert _servers(_section(config, "backend lane1")) == ["llama1", "llama3"]
    assert _servers(_section(config, "backend lane2")) == ["llama2", "llama3"]
    assert _servers(_section(config, "backend lane")) == ["llama3"]
    assert _servers(_section(config, "backend llama_servers")) == ["llama1", "llama2", "llama3"]
    for backend in ("backend lane1", "backend lane2", "backend lane"):
        lines = _section(config, backend)  # every lane backend verifies the token and spends it once
        assert any("jwt_verify(txn.alg" in line for line in lines)
        assert "http-request track-sc0 var(txn.jti) table jti_uses" in lines
        assert "http-request deny deny_status 404" not in lines
    _valid(config, tmp_path)


def test_in_the_gates_place_a_model_no_upstream_lists_is_refused_before_its_use_is_spent(tmp_path: Path) -> None:
    key = _public_key(tmp_path)
    config = render(HaproxyPlan(bind="127.0.0.1:8443", upstreams=("127.0.0.1:9001=alpha", "127.0.0.1:9002=beta"),
                                public_keys=(str(key),), audience="fleet", issuers=("a",)))
    lines = _section(config, "backend lane")
    assert _servers(lines) == []
    assert lines.index("http-request deny deny_status 404") < lines.index(
        "http-request track-sc0 var(txn.jti) table jti_uses")
    _valid(config, tmp_path)


@pytest.mark.parametrize("gate", ["10.0.0.1:8000=", "10.0.0.1:8000=a b", "10.0.0.1:8000=a,,b", "10.0.0.1:8000=a'",
                                  "10.0.0.1:8000=a#b", "10.0.0.1:8000=a,a", "10.0.0.1:8000=" + "m" * 129,
                                  "10.0.0.1:8000=a}", "bad=alpha"])
def test_a_model_list_that_would_need_escaping_is_refused(gate: str) -> None:
    with pytest.raises(ValueError):
        render(HaproxyPlan(bind="127.0.0.1:1", gates=(gate,)))


def test_the_command_takes_model_lists(tmp_path: Path) -> None:
    out = tmp_path / "edge.cfg"
    done = subprocess.run([sys.executable, "-m", "llama_launcher.cli", "haproxy-config",
                           "--gate", "127.0.0.1:8001=alpha", "--gate", "127.0.0.1:8002=beta", "--output", str(out)],
                          capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert "use_backend model2 if { var(txn.model) -m str beta }" in out.read_text()
    refused = subprocess.run([sys.executable, "-m", "llama_launcher.cli", "haproxy-config",
                              "--gate", "127.0.0.1:8001=al pha"], capture_output=True, text=True, env={**os.environ})
    assert refused.returncode != 0 and "model" in refused.stderr
