"""Nobody reads, nothing runs (issue 25, findings 5 and 7), against the real llama-server.

Each test measures what the point is about, llama-server's own work, as CPU-seconds of its
processes (/proc/PID/stat utime + stime, all threads; a router and its children summed), never
wall-clock speed. SmolLM2 decodes on both cores of the 2-core box, about 1.5-2 CPU-seconds per second
while it generates; idle, it uses about 0.01 CPU-seconds in five. So "idle" is asserted as less
than IDLE_CPU over a window: a margin of 50x over idle, and still 10-20x under one generating.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from stack import Stack, run_stack

from llama_launcher.bench.processes import cmdline, cpu_seconds, descendants

pytestmark = pytest.mark.real

IDLE_WINDOW = 5.0
IDLE_CPU = 0.5
"""CPU-seconds llama-server may use over IDLE_WINDOW and still count as idle (see the module's docstring)."""
RESUME_WINDOW = 2
SEND_TIMEOUT = 2
STORY = "Write a very long story about a lighthouse keeper, at least 3000 words."
LONG = {"messages": [{"role": "user", "content": STORY}], "stream": True, "max_tokens": 2048, "temperature": 0}
"""Greedy, SmolLM2 writes this story to the cap: 2,048 tokens, 18 s or more of decoding on 2 cores."""


def _llama_pids(stack: Stack) -> list[int]:
    """Every llama-server process of the stack now (a router's children appear as models load)."""
    found = []
    for pid in descendants(stack.process.pid):
        try:
            argv = cmdline(pid)
        except OSError:
            continue
        if argv and Path(argv[0]).name == "llama-server":
            found.append(pid)
    return found


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            continue
    return total


def _cpu_over(stack: Stack, seconds: float) -> float:
    """CPU-seconds llama-server (all its processes) used over the next `seconds`."""
    pids = _llama_pids(stack)
    before = _cpu(pids)
    time.sleep(seconds)
    return _cpu(pids) - before


def _headers(grant: dict) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {grant['token']}"}
    if grant.get("conversation_id"):
        headers["X-Conversation-Id"] = grant["conversation_id"]
    return headers


def _start_and_leave(stack: Stack, grant: dict, body: dict) -> None:
    """Open a resumable stream, read until the reply has begun, then go away as a closed tab does."""
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body, headers=_headers(grant),
                      timeout=120) as response:
        assert response.status_code == 200
        seen = b""
        for piece in response.iter_raw():
            seen += piece
            if b'"content"' in seen and len(seen) > 2000:
                break


def _resume_status(stack: Stack, conversation: str) -> int:
    resume = stack.negotiate(resume=conversation)
    answer = httpx.get(f"{resume['url']}/v1/stream", params={"conv_id": conversation, "from": 0},
                       headers=_headers(resume), timeout=30)
    return answer.status_code


@pytest.fixture(scope="module")
def short(llama_server_binary: Path, model_path: Path) -> Iterator[Stack]:
    with run_stack("--llama-server", str(llama_server_binary), "--resume-window", str(RESUME_WINDOW),
                   "--send-timeout", str(SEND_TIMEOUT), "--verbose") as running:
        yield running


def test_a_closed_tab_leaves_llama_server_idle_after_the_resume_window(short: Stack) -> None:
    grant = short.negotiate(resumable=True, max_tokens=2048)
    _start_and_leave(short, grant, LONG)
    left = time.monotonic()
    generating = _cpu_over(short, 1.0)
    assert generating > IDLE_CPU / IDLE_WINDOW, "the stream was not generating when its client left"
    time.sleep(max(0.0, left + RESUME_WINDOW + 2.0 - time.monotonic()))
    used = _cpu_over(short, IDLE_WINDOW)
    assert used < IDLE_CPU, f"llama-server used {used:.2f} CPU-s in {IDLE_WINDOW} s after the resume window"
    # The stream was cancelled, not merely finished: nothing is left to resume.
    assert _resume_status(short, grant["conversation_id"]) == 404


def test_a_resume_within_the_window_keeps_the_stream(short: Stack) -> None:
    grant = short.negotiate(resumable=True, max_tokens=64)
    _start_and_leave(short, grant, {**LONG, "max_tokens": 64})
    assert _resume_status(short, grant["conversation_id"]) == 200


def _raw_chat(stack: Stack, grant: dict, body: dict) -> socket.socket:
    """A client that sends one chat request and then reads nothing (a small receive buffer, so the
    gate's side fills sooner)."""
    url = urllib.parse.urlsplit(grant["url"])
    assert url.hostname is not None and url.port is not None
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((url.hostname, url.port))
    data = json.dumps(body).encode()
    client.sendall(
        f"POST {url.path}/v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {grant['token']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode() + data
    )
    return client


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout_and_llama_server_stops(short: Stack) -> None:
    grant = short.negotiate(max_tokens=2048)
    body = {**LONG, "logprobs": True, "top_logprobs": 20}  # about 2 KB a token: the buffers fill in seconds
    client = _raw_chat(short, grant, body)
    try:
        deadline = time.monotonic() + 120  # liveness only: the cut is logged long before on any machine
        while "client read nothing for" not in short.log_text():
            assert time.monotonic() < deadline, "the gate never cut the client that stopped reading"
            time.sleep(0.5)
        used = _cpu_over(short, IDLE_WINDOW)
        assert used < IDLE_CPU, f"llama-server used {used:.2f} CPU-s in {IDLE_WINDOW} s after the cut"
        # What the client finds when it reads at last: a reset, or the end before the stream's end.
        client.settimeout(30)
        received = b""
        try:
            while piece := client.recv(1 << 20):
                received += piece
        except ConnectionResetError:
            pass
        assert not received.endswith(b"0\r\n\r\n")
    finally:
        client.close()
