"""The direct lane end to end: serve's gate in front of a real llama-server with SmolLM2."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from stack import Stack

from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = pytest.mark.real

ALIAS = "smollm2-135m-instruct"
PROMPT = [{"role": "user", "content": "Name three colours."}]
DETERMINISTIC = {"messages": PROMPT, "stream": True, "max_tokens": 16, "temperature": 0, "seed": 7}
LONG = {"messages": [{"role": "user", "content": "Write a long story about a lighthouse."}], "stream": True,
        "max_tokens": 1500}


@pytest.fixture(scope="module")
def raw_server(llama_server_binary: Path, model_path: Path) -> Iterator[LlamaServer]:
    server = LlamaServer(ServerOptions(binary=llama_server_binary, model=model_path, alias=ALIAS, max_tokens=2048),
                         make_runtime_dir())
    server.start()
    server.wait_ready(timeout=120, show_progress=False)
    yield server
    server.stop()


def _events(lines: list[str]) -> list[dict]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def _shape(event: dict) -> tuple:
    """What must match between the lane and raw llama-server: structure and text, not ids or times."""
    choice = event["choices"][0] if event.get("choices") else {}
    return (tuple(sorted(event)), tuple(sorted(choice.get("delta", {}))), choice.get("delta", {}).get("content"),
            choice.get("finish_reason"), event.get("model"))


def _lane(stack: Stack, grant: dict) -> tuple[str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {grant['token']}"}
    if grant.get("conversation_id"):
        headers["X-Conversation-Id"] = grant["conversation_id"]
    return grant["url"] + "/v1/chat/completions", headers


def test_lane_stream_matches_raw_llama_server(stack: Stack, raw_server: LlamaServer) -> None:
    url, headers = _lane(stack, stack.negotiate())
    with httpx.stream("POST", url, json=DETERMINISTIC, headers=headers, timeout=60) as lane:
        lane_type, lane_lines = lane.headers["content-type"], list(lane.iter_lines())
        assert lane.status_code == 200
    assert isinstance(raw_server.address, str)
    transport = httpx.HTTPTransport(uds=raw_server.address)
    with httpx.Client(transport=transport, timeout=60) as client, client.stream(
        "POST", "http://llama/v1/chat/completions", json={**DETERMINISTIC, "max_tokens": 16},
        headers={"Authorization": raw_server.authorization().decode(), "Connection": "close"},
    ) as raw:
        raw_type, raw_lines = raw.headers["content-type"], list(raw.iter_lines())
    assert lane_type == raw_type and lane_type.startswith("text/event-stream")
    assert [_shape(e) for e in _events(lane_lines)] == [_shape(e) for e in _events(raw_lines)]
    assert lane_lines[-2:] == raw_lines[-2:] == ["data: [DONE]", ""] or lane_lines[-1] == raw_lines[-1]


def test_the_baseline_streams_what_the_lane_streams_and_answers_unstreamed(stack: Stack) -> None:
    """The fallback (`fallback_url`, the access token's session) gives the browser the same SSE as the lane."""
    grant = stack.negotiate()
    url, headers = _lane(stack, grant)
    with httpx.stream("POST", url, json=DETERMINISTIC, headers=headers, timeout=60) as lane:
        assert lane.status_code == 200
        lane_lines = list(lane.iter_lines())
    baseline_url = stack.base + grant["fallback_url"]
    session = {"Authorization": f"Bearer {stack.access_token}"}
    with httpx.stream("POST", baseline_url, json=DETERMINISTIC, headers=session, timeout=60) as baseline:
        assert baseline.status_code == 200
        assert baseline.headers["content-type"].startswith("text/event-stream")
        baseline_lines = list(baseline.iter_lines())
    assert [_shape(e) for e in _events(baseline_lines)] == [_shape(e) for e in _events(lane_lines)]
    assert "data: [DONE]" in baseline_lines

    answer = httpx.post(baseline_url, json={**DETERMINISTIC, "stream": False}, headers=session, timeout=60)
    assert answer.status_code == 200
    message = answer.json()["choices"][0]["message"]["content"]
    assert message == "".join(e["choices"][0]["delta"].get("content") or "" for e in _events(lane_lines)
                              if e.get("choices"))


def test_openai_sdk_streams_through_the_lane(stack: Stack) -> None:
    grant = stack.negotiate()
    client = openai.OpenAI(base_url=grant["url"] + "/v1", api_key=grant["token"], max_retries=0)
    stream = client.chat.completions.create(model=grant["model"], messages=PROMPT, stream=True, max_tokens=12)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.strip()
    assert grant["model"] == ALIAS


def test_spent_token_on_a_reused_connection_gets_401(stack: Stack) -> None:
    url, headers = _lane(stack, stack.negotiate())
    with httpx.Client(timeout=60) as client:
        first = client.post(url, json={**DETERMINISTIC, "stream": False}, headers=headers)
        assert first.status_code == 200
        again = client.post(url, json={**DETERMINISTIC, "stream": False}, headers=headers)
        assert again.status_code == 401
        assert again.json()["error"]["code"] == 401
        assert headers["Authorization"].split()[1] not in again.text


def test_two_tokens_on_one_kept_alive_connection(stack: Stack) -> None:
    with httpx.Client(timeout=60) as client:
        for _ in range(2):
            url, headers = _lane(stack, stack.negotiate())
            with client.stream("POST", url, json=DETERMINISTIC, headers=headers) as response:
                assert response.status_code == 200
                assert list(response.iter_lines())[-2] == "data: [DONE]"


def _wait_busy(stack: Stack, want: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stack.busy_slots() == want:
            return True
        time.sleep(0.05)
    return False


def _released_slot_tokens(stack: Stack) -> list[int]:
    """The `n_tokens` (prompt and generated) of each slot llama-server released, from its own log lines."""
    return [int(found) for found in re.findall(r"stop processing: n_tokens = (\d+)", stack.log_text())]


def test_client_disconnect_stops_the_generation(stack: Stack) -> None:
    """A client that leaves mid-stream ends its generation: llama-server releases the slot long before
    the 1,500 tokens asked for (read from llama-server's own release line, not from a clock)."""
    url, headers = _lane(stack, stack.negotiate())
    released_before = len(_released_slot_tokens(stack))
    with httpx.stream("POST", url, json=LONG, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        while not next(lines).startswith('data: {"choices":[{"finish_reason":null'):
            pass
        assert _wait_busy(stack, 1, 30.0), "the generation never showed as a busy slot"
    assert _wait_busy(stack, 0, 60.0), "the slot stayed busy after the client left"
    deadline = time.monotonic() + 30  # llama-server's line reaches the log file a moment later
    while len(_released_slot_tokens(stack)) == released_before and time.monotonic() < deadline:
        time.sleep(0.1)
    released = _released_slot_tokens(stack)[released_before:]
    assert released and released[-1] < 750, released  # half of the 1,500 asked for


def test_resume_returns_exactly_the_missing_bytes(stack: Stack) -> None:
    grant = stack.negotiate(resumable=True, max_tokens=200)
    conversation = grant["conversation_id"]
    assert conversation
    url, headers = _lane(stack, grant)
    body = {**LONG, "max_tokens": 200}
    first = b""
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            first += chunk
            if len(first) > 1500:
                break
    # Generation goes on without us. The first resume takes the stream over while it may still run, and
    # follows it to its end: no wait on the machine's speed, which could outlast the resume window.

    def read_from(offset: int) -> bytes:
        resume = stack.negotiate(resume=conversation)
        assert resume["scope"] == "resume" and resume["conversation_id"] == conversation
        response = httpx.get(f"{resume['url']}/v1/stream", params={"conv_id": conversation, "from": offset},
                             headers={"Authorization": f"Bearer {resume['token']}",
                                      "X-Conversation-Id": conversation}, timeout=120)
        assert response.status_code == 200, response.text
        return response.content

    rest = read_from(len(first))
    whole = read_from(0)
    assert first + rest == whole
    assert whole.rstrip().endswith(b"data: [DONE]")


def test_a_resume_token_cannot_read_another_conversation(stack: Stack) -> None:
    mine = stack.negotiate(resumable=True)["conversation_id"]
    other = stack.negotiate(resumable=True)["conversation_id"]
    resume = stack.negotiate(resume=mine)
    response = httpx.get(f"{resume['url']}/v1/stream", params={"conv_id": other, "from": 0},
                         headers={"Authorization": f"Bearer {resume['token']}"}, timeout=10)
    assert response.status_code == 403


def test_revocation_reaches_the_gate_within_a_second(stack: Stack) -> None:
    url, headers = _lane(stack, stack.negotiate())
    revoked = httpx.post(f"{stack.base}/direct-stream/revoke",
                         headers={"Authorization": f"Bearer {stack.access_token}"}, timeout=10)
    assert revoked.status_code in (200, 204)
    time.sleep(1.0)
    refused = httpx.post(url, json={**DETERMINISTIC, "stream": False}, headers=headers, timeout=120)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"]
    time.sleep(1.1)  # a token minted after the revocation works again
    url, headers = _lane(stack, stack.negotiate())
    # Liveness bounds only: 16 tokens take well under a second on a quiet box.
    assert httpx.post(url, json={**DETERMINISTIC, "stream": False}, headers=headers, timeout=120).status_code == 200
