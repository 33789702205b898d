"""Two gates and two brokers, one audience, one Redis, in front of one real llama-server.

Both `serve` stacks attach to the same llama-server (through a counting forwarder, so the test can
tell whether a request reached it), share `--audience`, list both brokers in `--issuer`, and sign
with one `--signing-key-file`. Their state meets in a private redis-server without persistence.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from forwarder import Forwarder
from haproxy_edge import haproxy_edge
from redis_fleet import one_server_two_brokers
from redis_server import RedisServer
from stack import Stack

from llama_direct.tokens import LEEWAY_SECONDS

pytestmark = pytest.mark.real

CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "stream": True, "max_tokens": 8}
COOKIE = "llama_direct_session"
Fleet = tuple[Stack, Stack, Forwarder, RedisServer, str]
"""Two brokers' stacks on one llama-server, its forwarder, the shared Redis, and the HAProxy edge's address."""


def _lane(stack: Stack, token: str, body: dict | None = None) -> httpx.Response:
    """One lane request at `stack`'s gate, read to the end."""
    return httpx.post(f"{stack.base}/direct/v1/chat/completions", json=body or CHAT,
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _reason(response: httpx.Response) -> str:
    return str(response.json()["error"]["reason"])


@pytest.fixture
def fleet(llama_server_binary: Path, model_path: Path,
          tmp_path: Path) -> Iterator[Fleet]:
    with one_server_two_brokers(llama_server_binary, model_path, tmp_path, "--token-ttl", "60",
                                "--trusted-proxy", "127.0.0.1") as (a, b, upstream, redis), \
            haproxy_edge(tmp_path, [f"127.0.0.1:{stack.port}" for stack in (a, b)]) as edge:
        yield a, b, upstream, redis, edge


def _chats(upstream: Forwarder) -> int:
    return len(upstream.requests(lambda line: line.startswith(b"POST")))


def test_two_gates_share_replay_revocations_and_sessions_and_fail_closed_without_redis(fleet: Fleet) -> None:
    a, b, upstream, redis, edge = fleet

    # Through HAProxy: log in (whichever broker answers), then negotiate and stream, several times,
    # each request landing on either stack; the shared session makes it all one user.
    login = httpx.get(f"{edge}/?token={a.access_token}", follow_redirects=False, timeout=10)
    assert login.status_code == 303
    through = {"Cookie": f"{COOKIE}={login.cookies[COOKIE]}"}
    for _ in range(4):
        grant = httpx.post(f"{edge}/direct-stream", headers=through, timeout=10).json()
        assert grant["url"] == f"{edge}/direct"
        response = httpx.post(f"{grant['url']}/v1/chat/completions", json=CHAT, timeout=60,
                              headers={**through, "Authorization": f"Bearer {grant['token']}"})
        assert response.status_code == 200, response.text

    # Spent at A, refused at B; and the other way round (each gate accepts both brokers).
    token = a.negotiate()["token"]
    assert _lane(a, token).status_code == 200
    reached = _chats(upstream)
    refused = _lane(b, token)
    assert (refused.status_code, _reason(refused)) == (401, "token_spent")
    other = b.negotiate()["token"]
    assert _lane(b, other).status_code == 200
    assert _reason(_lane(a, other)) == "token_spent"
    assert _chats(upstream) == reached + 1

    # A session made at broker A is known at broker B; a logout at A ends it everywhere, and within
    # one second no gate accepts a token minted before it.
    login = httpx.get(a.login_url, follow_redirects=False, timeout=10)
    session = {"Cookie": f"{COOKIE}={login.cookies[COOKIE]}"}
    minted = [httpx.post(f"{b.base}/direct-stream", headers=session, timeout=10).json()["token"] for _ in range(2)]
    assert httpx.post(f"{a.base}/logout", headers=session, timeout=10).status_code == 200
    logged_out = time.monotonic()
    time.sleep(1.0)
    for stack, token in zip((a, b), minted, strict=True):
        response = _lane(stack, token)
        assert (response.status_code, _reason(response)) == (401, "token_revoked")
    assert time.monotonic() - logged_out < 1.5
    assert httpx.post(f"{b.base}/direct-stream", headers=session, timeout=10).status_code == 401

    # A stream already running goes on when Redis goes down; new lane requests and negotiations get
    # 503 and never reach llama-server.
    held = [a.negotiate()["token"], b.negotiate()["token"]]
    spent_before = a.negotiate()["token"]
    assert _lane(a, spent_before).status_code == 200
    long_chat = {**CHAT, "max_tokens": 64, "messages": [{"role": "user", "content": "Count from 1 to 40."}]}
    running = a.negotiate()["token"]
    with httpx.stream("POST", f"{a.base}/direct/v1/chat/completions", json=long_chat,
                      headers={"Authorization": f"Bearer {running}"}, timeout=60) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: {"))
        redis.stop()
        assert any(line == "data: [DONE]" for line in lines)
    reached = _chats(upstream)
    for stack, token in zip((a, b), held, strict=True):
        response = _lane(stack, token)
        assert (response.status_code, _reason(response)) == (503, "shared_state_unavailable")
    negotiation = httpx.post(f"{b.base}/direct-stream", headers={"Authorization": f"Bearer {b.access_token}"},
                             timeout=10)
    assert (negotiation.status_code, _reason(negotiation)) == (503, "shared_state_unavailable")
    assert _chats(upstream) == reached

    # Redis back, empty: nothing minted before its run is accepted (spent or not), fresh tokens work.
    redis.start()
    for stack in (a, b):
        for token in (spent_before, *held):
            assert _lane(stack, token).status_code == 401
    assert _chats(upstream) == reached
    deadline = time.monotonic() + LEEWAY_SECONDS + 10
    while True:
        fresh = b.negotiate()["token"]
        response = _lane(b, fresh)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        assert _reason(response) == "token_predates_gate"
        time.sleep(0.5)
    assert response.status_code == 200
    assert _reason(_lane(a, fresh)) == "token_spent"
