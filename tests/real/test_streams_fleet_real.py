"""One stream cap across two brokers: two serve stacks (two gates, two brokers) on one Redis in front of one
real llama-server. Dee (`users add --streams 1`) streams through gate A; while it runs, broker B refuses
her a grant and a baseline (429 too_many_streams), though gate B has never seen her; once gate A reports
her stream's end, broker B grants her one, and it streams through gate B."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_fleet import one_server_two_brokers
from stack import Stack

from llama_direct.runtime import REDIS_URL_ENV

pytestmark = pytest.mark.real

CHAT = {"messages": [{"role": "user", "content": "Count from one to twenty."}], "stream": True, "max_tokens": 48,
        "temperature": 0}


@pytest.fixture
def fleet(llama_server_binary: Path, model_path: Path, tmp_path: Path) -> Iterator[tuple[Stack, Stack, str]]:
    with one_server_two_brokers(llama_server_binary, model_path, tmp_path, parallel=2) as (a, b, _, redis):
        yield a, b, redis.url


def add_user(redis_url: str, *argv: str) -> str:
    """`llama-direct users add` on the fleet's Redis, as an operator runs it: the new user's API key."""
    done = subprocess.run([sys.executable, "-m", "llama_launcher.cli", "users", "add", *argv], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, REDIS_URL_ENV: redis_url})
    assert done.returncode == 0, done.stderr
    return dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())["API key"]


def negotiate(client: httpx.Client, stack: Stack) -> httpx.Response:
    return client.post(stack.base + "/direct-stream", json={})


def reason(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["reason"]


def lane_chat(grant: dict[str, Any]) -> httpx.Response:
    """One chat on the grant's lane, its whole answer read."""
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=CHAT, timeout=120,
                      headers={"Authorization": f"Bearer {grant['token']}"}) as answer:
        answer.read()
    return answer


def test_one_stream_cap_across_two_brokers_and_gates(fleet: tuple[Stack, Stack, str]) -> None:
    a, b, redis_url = fleet
    dee = add_user(redis_url, "dee", "--streams", "1")
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {dee}"}) as client:
        granted = negotiate(client, a)
        assert granted.status_code == 200, granted.text
        grant = granted.json()
        assert grant["grant"]["streams"] == 1
        with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=CHAT, timeout=120,
                          headers={"Authorization": f"Bearer {grant['token']}"}) as running:
            assert running.status_code == 200
            chunks = running.iter_raw()
            assert next(chunks)  # generating through gate A

            refused = negotiate(client, b)
            assert reason(refused) == (429, "too_many_streams") and refused.headers["retry-after"] == "1"
            baseline = client.post(b.base + "/v1/chat/completions", json=CHAT)
            assert reason(baseline) == (429, "too_many_streams")
            assert b"data: [DONE]" in b"".join(chunks)  # read to its end: gate A reports the end to broker A

        while not client.get(b.base + "/v1/usage").json()["rows"]:  # settled in the one shared ledger
            time.sleep(0.1)
        again = negotiate(client, b)
        assert again.status_code == 200, again.text
        answer = lane_chat(again.json())
        assert answer.status_code == 200 and b"data: [DONE]" in answer.content
