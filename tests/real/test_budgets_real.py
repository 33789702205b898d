"""Token budgets end to end, on the real gate and llama-server: Ann (100 tokens a day) asks for three
streams of 80 tokens at once; what her streams generate never exceeds 100, the refused negotiation says
budget_exhausted, Bob is unaffected, and once the streams end the ledger holds what llama-server reported
generating and the unused reservations have returned."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from stack import Stack

pytestmark = pytest.mark.real

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea, in detail."}]


def command(stack: Stack, *argv: str) -> str:
    """A real `llama-direct` command in its own process, on serve's data dir while serve runs."""
    done = subprocess.run([sys.executable, "-m", "llama_launcher.cli", *argv, "--data-dir", str(stack.data_dir)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def api_key(stack: Stack, name: str, *limits: str) -> str:
    shown = dict(line.split(": ", 1) for line in command(stack, "users", "add", name, *limits).strip().splitlines())
    return shown["API key"]


def negotiate(stack: Stack, key: str) -> httpx.Response:
    return httpx.post(stack.base + "/direct-stream", json={"max_tokens": 80}, timeout=60,
                      headers={"Authorization": f"Bearer {key}"})


def stream(grant: dict[str, Any]) -> dict[str, Any]:
    """One chat on the lane asking the grant's whole max_tokens; the usage llama-server reported in it."""
    body = {"messages": PROMPT, "stream": True, "max_tokens": grant["grant"]["max_tokens"], "temperature": 0,
            "stream_options": {"include_usage": True}}
    usage: dict[str, Any] | None = None
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {grant['token']}"}) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    assert usage is not None
    return usage


def events(grant: dict[str, Any], path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every data event of one stream on the lane, parsed."""
    found = []
    with httpx.stream("POST", grant["url"] + path, json=body, timeout=300,
                      headers={"Authorization": f"Bearer {grant['token']}"}) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                found.append(json.loads(line[6:]))
    return found


def ledger(stack: Stack, name: str, requests: int) -> list[dict[str, Any]]:
    """A user's ledger rows once the gate's reports of `requests` streams have reached the broker."""
    for _ in range(600):
        rows = [json.loads(line) for line in command(stack, "usage", "--user", name, "--json").splitlines()]
        if sum(row["requests"] for row in rows) >= requests:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"the gate's usage reports did not arrive: {rows}")


def test_concurrent_streams_never_overshoot_the_days_budget(stack: Stack) -> None:
    ann = api_key(stack, "ann", "--tokens-per-day", "100")
    bob = api_key(stack, "bob", "--tokens-per-day", "100")

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: negotiate(stack, ann), range(3)))
    granted = [answer.json() for answer in answers if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code != 200]
    assert sorted(grant["grant"]["max_tokens"] for grant in granted) == [20, 80]
    assert [(r.status_code, r.json()["error"]["reason"]) for r in refused] == [(429, "budget_exhausted")]
    assert 0 < int(refused[0].headers["retry-after"]) <= 86_400

    bob_grant = negotiate(stack, bob)
    assert bob_grant.status_code == 200 and bob_grant.json()["grant"]["max_tokens"] == 80  # B is unaffected

    with ThreadPoolExecutor(2) as pool:
        reported = list(pool.map(stream, granted))
    generated = sum(usage["completion_tokens"] for usage in reported)
    assert generated <= 100
    for usage, grant in zip(reported, granted, strict=True):
        assert usage["completion_tokens"] <= grant["grant"]["max_tokens"]

    rows = ledger(stack, "ann", 2)
    assert sum(row["completion_tokens"] for row in rows) == generated  # what llama-server reported
    assert sum(row["prompt_tokens"] for row in rows) == sum(usage["prompt_tokens"] for usage in reported)
    assert all((row["user"], row["lane"], row["route"], row["unseen"]) == ("ann", "direct", "chat", 0) for row in rows)
    left = command(stack, "usage", "--user", "ann")
    assert f"left: {100 - generated} today" in left  # the unused parts returned

    mine = httpx.get(stack.base + "/v1/usage", headers={"Authorization": f"Bearer {ann}"}, timeout=30).json()
    assert (mine["day_used"], mine["day_left"]) == (generated, 100 - generated)
    again = negotiate(stack, ann)
    if 100 - generated >= 16:
        assert again.status_code == 200 and again.json()["grant"]["max_tokens"] == min(80, 100 - generated)
    else:
        assert again.status_code == 429


def test_responses_and_messages_streams_are_settled_from_their_own_events(stack: Stack) -> None:
    """Each format's usage is where that format puts it: Responses' response.completed, Messages'
    message_delta (and message_start for the prompt); the ledger holds what llama-server reported."""
    key = api_key(stack, "cat", "--tokens-per-day", "1000")
    grants = {}
    for route in ("responses", "messages"):
        answer = httpx.post(stack.base + "/direct-stream", json={"route": route, "max_tokens": 24}, timeout=60,
                            headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        grants[route] = answer.json()
    completed = events(grants["responses"], "/v1/responses",
                       {"input": "Tell me about the sea.", "stream": True, "max_output_tokens": 24})
    [usage] = [event["response"]["usage"] for event in completed if event.get("type") == "response.completed"]
    messages = events(grants["messages"], "/v1/messages",
                      {"messages": PROMPT, "stream": True, "max_tokens": 24})
    [start] = [event["message"]["usage"] for event in messages if event.get("type") == "message_start"]
    [delta] = [event["usage"] for event in messages if event.get("type") == "message_delta"]
    rows = {row["route"]: row for row in ledger(stack, "cat", 2)}
    assert (rows["responses"]["completion_tokens"], rows["responses"]["prompt_tokens"]) == (
        usage["output_tokens"], usage["input_tokens"])
    assert (rows["messages"]["completion_tokens"], rows["messages"]["prompt_tokens"]) == (
        delta["output_tokens"], start["input_tokens"] + start.get("cache_read_input_tokens", 0))
    generated = usage["output_tokens"] + delta["output_tokens"]
    assert f"left: {1000 - generated} today" in command(stack, "usage", "--user", "cat")
