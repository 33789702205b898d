"""One budget across two brokers: two serve stacks (two gates, two brokers) on one Redis in front of one
real llama-server. Ann (100 tokens a day) negotiates at both brokers at once; together they never grant
more than 100, what her streams at both gates generate is settled into the one shared ledger, and the
unused reservations return to the one budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_fleet import one_server_two_brokers
from stack import Stack

from llama_direct.runtime import REDIS_URL_ENV

pytestmark = pytest.mark.real

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea, in detail."}]


@pytest.fixture
def fleet(llama_server_binary: Path, model_path: Path, tmp_path: Path) -> Iterator[tuple[Stack, Stack, str]]:
    with one_server_two_brokers(llama_server_binary, model_path, tmp_path, "--token-ttl", "60",
                                parallel=2) as (a, b, _, redis):
        yield a, b, redis.url


def command(redis_url: str, *argv: str) -> str:
    """A real `llama-direct` command on the fleet's Redis, as an operator runs it on any machine."""
    done = subprocess.run([sys.executable, "-m", "llama_launcher.cli", *argv], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, REDIS_URL_ENV: redis_url})
    assert done.returncode == 0, done.stderr
    return done.stdout


def negotiate(stack: Stack, key: str) -> httpx.Response:
    return httpx.post(stack.base + "/direct-stream", json={"max_tokens": 80}, timeout=60,
                      headers={"Authorization": f"Bearer {key}"})


def stream(grant: dict[str, Any]) -> int:
    """One chat on the lane asking the grant's whole max_tokens: the completion tokens llama-server reported."""
    body = {"messages": PROMPT, "stream": True, "max_tokens": grant["grant"]["max_tokens"], "temperature": 0,
            "stream_options": {"include_usage": True}}
    completion: int | None = None
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {grant['token']}"}) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if line.startswith("data: {") and (usage := json.loads(line[6:]).get("usage")):
                completion = int(usage["completion_tokens"])
    assert completion is not None
    return completion


def test_two_brokers_share_one_budget(fleet: tuple[Stack, Stack, str]) -> None:
    a, b, redis_url = fleet
    shown = dict(line.split(": ", 1) for line in
                 command(redis_url, "users", "add", "ann", "--tokens-per-day", "100").strip().splitlines())
    ann = shown["API key"]

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda stack: (stack, negotiate(stack, ann)), (a, b, a)))
    granted = [(stack, answer.json()) for stack, answer in answers if answer.status_code == 200]
    refused = [answer for _, answer in answers if answer.status_code != 200]
    assert sorted(grant["grant"]["max_tokens"] for _, grant in granted) == [20, 80]
    assert [(r.status_code, r.json()["error"]["reason"]) for r in refused] == [(429, "budget_exhausted")]

    with ThreadPoolExecutor(2) as pool:  # each grant at its own broker's gate, which reports to that broker
        generated = sum(pool.map(lambda pair: stream(pair[1]), granted))
    assert generated <= 100

    rows: list[dict[str, Any]] = []
    for _ in range(600):
        rows = [json.loads(line) for line in command(redis_url, "usage", "--user", "ann", "--json").splitlines()]
        if sum(row["requests"] for row in rows) >= 2:
            break
        time.sleep(0.2)
    assert sum(row["requests"] for row in rows) == 2, rows
    assert sum(row["completion_tokens"] for row in rows) == generated
    assert f"left: {100 - generated} today" in command(redis_url, "usage", "--user", "ann")
    for stack in (a, b):  # both brokers see the one budget
        mine = httpx.get(stack.base + "/v1/usage", headers={"Authorization": f"Bearer {ann}"}, timeout=30).json()
        assert (mine["day_used"], mine["day_left"]) == (generated, 100 - generated)
