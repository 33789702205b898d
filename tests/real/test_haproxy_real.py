"""HAProxy 2.6 in the gate's place, in front of two real llama-servers: the hostile probes against it.

`llama-direct haproxy-config --upstream` writes the config; Debian's haproxy runs it with
llama-server's key in its environment only (both llama-servers share it). A counting forwarder
stands between HAProxy and each llama-server, so each probe shows whether an upstream was reached.
The token and route probes are those of `tests/hostile` (the Python gate's status beside each, in
`GATE`), sent with `model` and `max_tokens` as this mode requires, plus the probes that only this
mode needs. Each one is refused without reaching either llama-server, or is in `KNOWN_LIMITS`, which
docs/fleet.md lists ("What HAProxy cannot do that the Python gate does").
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from forwarder import Forwarder
from haproxy_edge import exchange, free_port, haproxy_binary, haproxy_in_gates_place, public_key_file
from hostile_support import claims, hs256_with_public_key, signed, swap_payload, unsigned

from broker.signing_keys import SigningKey
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

MODEL = "smollm2"
CAP = 16
AUDIENCE, ISSUER = "fleet", "broker-a"
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "model": MODEL,
                        "max_tokens": 4}
GATE_OWN = (b"GET /health ",)
KEY = SigningKey.generate("ES256")
EDDSA = SigningKey.generate("EdDSA")
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000185d114090000000049454e44ae426082")

IMAGE_MESSAGE = {"role": "user", "content": [
    {"type": "text", "text": "what is it?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}},
]}


def payload(**overrides: Any) -> dict[str, Any]:
    grant = {"routes": [["POST", "/v1/chat/completions"]], "model": MODEL, "max_tokens": CAP, "uses": 1}
    values = {"iss": ISSUER, "aud": AUDIENCE, **overrides, "grant": {**grant, **overrides.get("grant", {})}}
    return claims(**values)


def token(**overrides: Any) -> str:
    return signed(KEY, payload(**overrides))


def request(tok: str | None, *, method: bytes = b"POST", target: bytes = b"/direct/v1/chat/completions",
            body: bytes | dict[str, Any] = CHAT, headers: bytes = b"") -> bytes:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    auth = b"Authorization: Bearer " + tok.encode() + b"\r\n" if tok else b""
    return (method + b" " + target + b" HTTP/1.1\r\nHost: lane\r\nConnection: close\r\n" + auth
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(raw) + headers + b"\r\n" + raw)


class Edge:
    def __init__(self, port: int, *forwarders: Forwarder) -> None:
        self.port = port
        self.forwarders = forwarders

    def forwarded(self) -> list[bytes]:
        """What reached any llama-server behind HAProxy (its own health checks left out)."""
        return [line for forwarder in self.forwarders
                for line in forwarder.requests(lambda line: not line.startswith(GATE_OWN))]

    def exchange(self, raw: bytes) -> int:
        return exchange(self.port, raw, timeout=60)


@pytest.fixture(scope="module")
def edge(llama_server_binary: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    haproxy_binary()  # skip before llama-server starts where HAProxy is missing
    workdir = tmp_path_factory.mktemp("haproxy")
    public_key = public_key_file(KEY, workdir)
    server = LlamaServer(ServerOptions(binary=llama_server_binary, model=model_path, alias=MODEL, max_tokens=2048,
                                       parallel=1), make_runtime_dir())
    server.start()
    second = None
    try:
        server.wait_ready(timeout=120, show_progress=False)
        key = server.authorization().decode().removeprefix("Bearer ")
        # A second llama-server with the same key (HAProxy sends one `${LLAMA_API_KEY}` to all), as an
        # operator would start it: the key in its environment only.
        second_port = free_port()
        second = subprocess.Popen([str(llama_server_binary), "-m", str(model_path), "--alias", MODEL, "-np", "1",
                                   "--host", "127.0.0.1", "--port", str(second_port)],
                                  env={"LLAMA_API_KEY": key}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_healthy(second, second_port)
        port, peer_port = free_port(), free_port()
        with Forwarder(str(server.address)) as forwarder, Forwarder(("127.0.0.1", second_port)) as other, \
                haproxy_in_gates_place(
                    workdir, port, key, "--upstream", f"127.0.0.1:{forwarder.port}",
                    "--upstream", f"127.0.0.1:{other.port}", "--public-key-file", str(public_key),
                    "--audience", AUDIENCE, "--issuer", ISSUER, "--issuer", "broker-b",
                    "--peer", f"hap1=127.0.0.1:{peer_port}", "--local-peer", "hap1"):
            time.sleep(2.5)  # the first health checks mark both llama-servers up
            yield Edge(port, forwarder, other)
    finally:
        if second is not None:
            second.terminate()
            second.wait(30)
        server.stop()


def _wait_healthy(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, "the second llama-server exited"
        assert time.monotonic() < deadline, "the second llama-server was not ready"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)


# name -> (build, the Python gate's status where tests/hostile has the probe, HAProxy's status)
PROBES: dict[str, tuple[Callable[[], bytes], int | None, int]] = {
    "no_token": (lambda: request(None), 401, 401),
    "alg_none": (lambda: request(unsigned({"alg": "none"}, payload())), 401, 401),
    "eddsa_token": (lambda: request(signed(EDDSA, payload())), 401, 401),
    "hs256_with_the_public_key": (lambda: request(hs256_with_public_key(KEY, payload())), 401, 401),
    "tampered_grant": (lambda: request(swap_payload(token(), payload(grant={"max_tokens": 100_000}))), 401, 401),
    "truncated_signature": (lambda: request(token()[:-10]), 401, 401),
    "expired": (lambda: request(token(exp=int(time.time()) - 60, iat=int(time.time()) - 90,
                                      nbf=int(time.time()) - 90)), 401, 401),
    "not_yet_valid": (lambda: request(token(nbf=int(time.time()) + 60)), 401, 401),
    "wrong_audience": (lambda: request(token(aud="other-gate")), 401, 401),
    "wrong_issuer": (lambda: request(token(iss="broker-x")), 401, 401),
    "resume_scope_on_chat": (lambda: request(token(scope="resume")), 403, 403),
    "token_in_the_query": (
        lambda: request(None, target=b"/direct/v1/chat/completions?access_token=" + token().encode()), 401, 400),
    "max_tokens_over_the_cap": (lambda: request(token(), body={**CHAT, "max_tokens": CAP + 1}), 400, 400),
    "n_predict_over_the_cap": (lambda: request(token(), body={**CHAT, "n_predict": CAP + 1}), 400, 400),
    "max_tokens_twice": (lambda: request(token(), body=b'{"messages":[{"role":"user","content":"hi"}],"model":"'
                                         + MODEL.encode() + b'","max_tokens":4,"max_tokens":100000}'), 400, 400),
    "escaped_key": (lambda: request(token(), body=b'{"messages":[{"role":"user","content":"hi"}],"model":"'
                                    + MODEL.encode() + b'","max_tokens":4,"max_\\u0074okens":100000}'), 400, 400),
    # json_query reads 1e9 and true as 1, where llama-server reads 1e9, or its default for true.
    "max_tokens_as_an_exponent": (lambda: request(token(), body=b'{"messages":[{"role":"user","content":"hi"}],'
                                                  b'"model":"' + MODEL.encode() + b'","max_tokens":1e9}'), 400, 400),
    "n_predict_as_true": (lambda: request(token(), body={**CHAT, "n_predict": True}), 400, 400),
    # llama-server would download it itself.
    "image_by_url": (lambda: request(token(), body={**CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}}]}]}), 400, 400),
    # A field the Python gate refuses, as a top-level scalar.
    "id_slot": (lambda: request(token(), body={**CHAT, "id_slot": 0}), 400, 400),
    "ignore_eos": (lambda: request(token(), body={**CHAT, "ignore_eos": True}), 400, 400),
    # The gate puts a pinned system prompt first; HAProxy cannot, so it refuses the grant.
    "a_pinned_system_prompt": (lambda: request(token(grant={"system_prompt": "Answer briefly."})), None, 403),
    # A user's own stream limit: HAProxy counts no streams per user, so it refuses the grant.
    "a_users_own_stream_limit": (lambda: request(token(grant={"streams": 2})), None, 403),
    "missing_max_tokens": (lambda: request(token(), body={k: v for k, v in CHAT.items() if k != "max_tokens"}),
                           None, 400),
    "missing_model": (lambda: request(token(), body={k: v for k, v in CHAT.items() if k != "model"}), None, 400),
    "model_mismatch": (lambda: request(token(), body={**CHAT, "model": "other"}), 403, 403),
    "invalid_json": (lambda: request(token(), body=b'{"messages":'), 400, 400),
    "dot_dot_to_slots": (lambda: request(token(), target=b"/direct/v1/chat/completions/../../slots"), 400, 404),
    "percent_encoded_dots": (lambda: request(token(), target=b"/direct/v1/%2e%2e/props"), 400, 404),
    "lane_slots": (lambda: request(token(), method=b"GET", target=b"/direct/slots", body=b""), 404, 404),
    "lane_post_props": (lambda: request(token(), target=b"/direct/props"), 404, 404),
    "lane_metrics": (lambda: request(token(), method=b"GET", target=b"/direct/metrics", body=b""), 404, 404),
    "off_the_lane": (lambda: request(token(), target=b"/v1/chat/completions"), None, 404),
    "content_length_and_transfer_encoding": (lambda: request(token(), headers=b"Transfer-Encoding: chunked\r\n"),
                                             400, 400),
    "foreign_origin": (lambda: request(token(), headers=b"Origin: http://evil.test\r\n"), 403, 403),
    "foreign_conversation": (lambda: request(token(), headers=b"X-Conversation-Id: someone-else\r\n"), 403, 403),
    "wrong_conversation": (lambda: request(token(grant={"conversation_id": "c1"}),
                                           headers=b"X-Conversation-Id: c2\r\n"), 403, 403),
    "not_json": (lambda: request(token(), headers=b"X-Pad: 1\r\n").replace(b"application/json", b"text/plain"),
                 400, 400),
}

KNOWN_LIMITS: dict[str, tuple[Callable[[], bytes], int | None]] = {
    # Body shaping: a field the Python gate refuses passes when its value is a list or an object
    # (json_query finds scalars only); llama-server reads it.
    "lora": (lambda: request(token(), body={**CHAT, "lora": [{"id": 0, "scale": 1.0}]}), 400),
    # Images are not decoded or bounded: llama-server gets them and answers for itself.
    "image_to_a_model_without_vision": (lambda: request(token(), body={**CHAT, "messages": [IMAGE_MESSAGE]}), 400),
}


def test_each_probe_is_refused_before_llama_server(edge: Edge) -> None:
    results: dict[str, tuple[int, bool]] = {}
    for name, (build, _gate_status, _expected) in PROBES.items():
        before = len(edge.forwarded())
        status = edge.exchange(build())
        time.sleep(0.05)
        results[name] = (status, len(edge.forwarded()) > before)
    wrong = {name: got for name, got in results.items() if got != (PROBES[name][2], False)}
    assert wrong == {}, f"refused with another status, or reached llama-server: {wrong}"


def test_a_good_request_streams_once_and_its_token_never_again(edge: Edge) -> None:
    chat = b"POST /v1/chat/completions HTTP/1.1"
    before = [len(f.requests(lambda line: line == chat)) for f in edge.forwarders]
    for _ in range(4):
        good = token()
        chats = edge.forwarded().count(chat)
        assert edge.exchange(request(good)) == 200
        assert edge.forwarded().count(chat) == chats + 1
        assert edge.exchange(request(good)) == 401
        assert edge.forwarded().count(chat) == chats + 1
    # HAProxy balances over both llama-servers: each one answered some of them.
    assert all(len(f.requests(lambda line: line == chat)) > n for f, n in zip(edge.forwarders, before, strict=True))


def test_the_known_limits_still_reach_llama_server(edge: Edge) -> None:
    """docs/fleet.md lists these; if HAProxy starts refusing one, this fails and docs/fleet.md must change."""
    for name, (build, _gate_status) in KNOWN_LIMITS.items():
        before = len(edge.forwarded())
        edge.exchange(build())
        assert len(edge.forwarded()) == before + 1, name


def test_a_grant_that_may_not_load_its_model_tells_llama_server_so(edge: Edge) -> None:
    """`autoload: false` goes on as `?autoload=false`, which a router obeys (400 "model is not loaded"
    for a model it has not loaded) and a single-model llama-server ignores; any other grant sends none."""
    no_load, plain = b"POST /v1/chat/completions?autoload=false HTTP/1.1", b"POST /v1/chat/completions HTTP/1.1"
    before = edge.forwarded()
    assert edge.exchange(request(token(grant={"autoload": False}))) == 200
    assert edge.forwarded().count(no_load) == before.count(no_load) + 1
    assert edge.exchange(request(token(grant={"autoload": True}))) == 200
    assert edge.exchange(request(token())) == 200
    assert edge.forwarded().count(plain) == before.count(plain) + 2
    assert edge.forwarded().count(no_load) == before.count(no_load) + 1


def test_a_grant_of_several_uses_is_spent_exactly_that_often(edge: Edge) -> None:
    twice = token(grant={"uses": 2})
    assert [edge.exchange(request(twice)) for _ in range(3)] == [200, 200, 401]
    once = signed(KEY, {**payload(), "grant": {k: v for k, v in payload()["grant"].items() if k != "uses"}})
    assert [edge.exchange(request(once)) for _ in range(2)] == [200, 401]
