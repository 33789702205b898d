"""HAProxy at the edge routes by model: two machines, each with its own llama-server and its own key.

Each `serve` stack attaches to only its own llama-server (the SmolLM2 model, named `alpha` on one and
`beta` on the other), through a counting forwarder, so the test sees which llama-server a request
reached. The stacks share an audience, a signing key and one private redis-server; HAProxy runs the
config `llama-direct haproxy-config --gate A=alpha --gate B=beta` writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from forwarder import Forwarder
from haproxy_edge import haproxy_edge
from redis_fleet import signing_key_file, wait_out_redis_start
from redis_server import RedisServer
from stack import Stack, run_stack

from llama_direct.runtime import ACCESS_TOKEN_ENV, REDIS_URL_ENV
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = pytest.mark.real

CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}
ACCESS_TOKEN = "edge-test-access-token-0123456789"
LOGIN = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
MODELS = ("alpha", "beta")


def _chats(upstream: Forwarder) -> int:
    return len(upstream.requests(lambda line: line.startswith(b"POST")))


@pytest.fixture
def edge_fleet(llama_server_binary: Path, model_path: Path,
               tmp_path: Path) -> Iterator[tuple[dict[str, Forwarder], str]]:
    redis = RedisServer(tmp_path)
    redis.start()
    signing_key = signing_key_file(tmp_path)
    upstreams: dict[str, Forwarder] = {}
    stacks: dict[str, Stack] = {}
    with ExitStack() as exits:
        exits.callback(redis.stop)
        servers = {name: LlamaServer(ServerOptions(binary=llama_server_binary, model=model_path, alias=name,
                                                   parallel=1), make_runtime_dir()) for name in MODELS}
        for server in servers.values():
            server.start()
            exits.callback(server.stop)
        for number, (name, server) in enumerate(servers.items()):
            server.wait_ready(timeout=120, show_progress=False)
            key = server.authorization().removeprefix(b"Bearer ").decode()
            upstreams[name] = exits.enter_context(Forwarder(server.address))  # type: ignore[arg-type]  # a unix socket
            own, other = ("broker-a", "broker-b") if number == 0 else ("broker-b", "broker-a")
            stacks[name] = exits.enter_context(run_stack(
                "--upstream", f"http://127.0.0.1:{upstreams[name].port}", "--model-alias", name,
                "--audience", "fleet", "--issuer", own, "--issuer", other, "--signing-key-file", str(signing_key),
                "--token-ttl", "60", "--trusted-proxy", "127.0.0.1",
                env={"LLAMA_DIRECT_UPSTREAM_KEY": key, REDIS_URL_ENV: redis.url, ACCESS_TOKEN_ENV: ACCESS_TOKEN}))
        edge = exits.enter_context(haproxy_edge(tmp_path, [f"127.0.0.1:{stacks[name].port}={name}" for name in MODELS]))
        wait_out_redis_start(redis)
        yield upstreams, edge


def test_the_edge_sends_each_model_to_its_own_machine(
        edge_fleet: tuple[dict[str, Forwarder], str]) -> None:
    upstreams, edge = edge_fleet
    login = httpx.get(f"{edge}/?token={ACCESS_TOKEN}", follow_redirects=False, timeout=10)
    assert login.status_code == 303
    session = {"Cookie": f"llama_direct_session={login.cookies['llama_direct_session']}"}

    # The picker lists both machines' models, whichever broker answers (each publishes its own in Redis).
    deadline = time.monotonic() + 10
    while True:
        listed = [httpx.get(f"{edge}/v1/models", headers=session, timeout=10).json() for _ in range(4)]
        if all({e["id"] for e in answer["data"]} == set(MODELS) for answer in listed):
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.5)
    assert all(e["status"] == "loaded" for answer in listed for e in answer["data"])

    # A negotiation names its model in the body; its lane request carries it in the token. Both land
    # on the machine that serves it, and only its llama-server is reached.
    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        before = {n: _chats(upstreams[n]) for n in MODELS}
        for _ in range(3):
            grant = httpx.post(f"{edge}/direct-stream", json={"model": name}, headers=session, timeout=10)
            assert grant.status_code == 200, grant.text
            token = grant.json()["token"]
            lane = httpx.post(f"{grant.json()['url']}/v1/chat/completions", json=CHAT, timeout=60,
                              headers={"Authorization": f"Bearer {token}"})
            assert lane.status_code == 200, lane.text
        assert _chats(upstreams[name]) == before[name] + 3
        assert _chats(upstreams[other]) == before[other]

    # The negotiation's GET form names its model in the query; its lane request lands there too.
    before = {n: _chats(upstreams[n]) for n in MODELS}
    grant = httpx.get(f"{edge}/direct-stream", params={"model": "beta"}, headers=session, timeout=10)
    assert grant.status_code == 200, grant.text
    lane = httpx.post(f"{grant.json()['url']}/v1/chat/completions", json=CHAT, timeout=60,
                      headers={"Authorization": f"Bearer {grant.json()['token']}"})
    assert lane.status_code == 200, lane.text
    assert (_chats(upstreams["beta"]), _chats(upstreams["alpha"])) == (before["beta"] + 1, before["alpha"])

    # The baseline names its model in the body too.
    before = {n: _chats(upstreams[n]) for n in MODELS}
    baseline = httpx.post(f"{edge}/v1/chat/completions", json={**CHAT, "model": "beta"}, headers=LOGIN, timeout=60)
    assert baseline.status_code == 200, baseline.text
    assert (_chats(upstreams["beta"]), _chats(upstreams["alpha"])) == (before["beta"] + 1, before["alpha"])

    # Resume and cancel reach the broker that opened the conversation (no other broker knows it).
    for name in MODELS:
        opened = httpx.post(f"{edge}/direct-stream", json={"model": name, "resumable": True}, headers=LOGIN,
                            timeout=10)
        conversation = opened.json()["conversation_id"]
        assert opened.headers["x-conversation-id"] == conversation
        # POST and the GET form's query alike; no other broker would answer any of them.
        for method, option in (("POST", "resume"), ("GET", "resume"), ("GET", "resume"), ("POST", "resume"),
                               ("POST", "cancel")):
            again = (httpx.post(f"{edge}/direct-stream", json={option: conversation}, headers=LOGIN, timeout=10)
                     if method == "POST" else
                     httpx.get(f"{edge}/direct-stream", params={option: conversation}, headers=LOGIN, timeout=10))
            assert again.status_code == 200, (method, again.text)

    # A model no machine serves: every gate's broker refuses it as usual.
    unknown = httpx.post(f"{edge}/direct-stream", json={"model": "gamma"}, headers=LOGIN, timeout=10)
    assert (unknown.status_code, unknown.json()["error"]["reason"]) == (400, "unknown_model")
