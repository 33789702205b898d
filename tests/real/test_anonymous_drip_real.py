"""Anonymous peers against the real stack: slow, oversized bodies cannot make the gate hold memory.

Twenty anonymous connections each declare a 20 MB body and drip one byte every half second; the
gate must grow by under 64 MB meanwhile, and a logged-in user must still stream through the lane.
Loopback only, bounded in count (20) and time (about 12 s of dripping).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest
from stack import Stack

from llama_launcher.bench.processes import children, cmdline, rss_kib, state

pytestmark = [pytest.mark.real, pytest.mark.timeout(180)]

CONNECTIONS = 20
DECLARED = 20 * 1024 * 1024
DRIP_SECONDS = 12.0
LIMIT_KIB = 64 * 1024


def _gate_pid(stack: Stack) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for pid in children(stack.process.pid):
            if "llama_launcher.gate_process" in " ".join(cmdline(pid)) and state(pid) not in ("gone", "Z"):
                return pid
        time.sleep(0.1)
    raise AssertionError("no gate process")


def _drip(port: int, stop: threading.Event, opened: list[int]) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    ).encode()
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        opened.append(1)
        while not stop.wait(0.5):
            sock.sendall(b" ")


def _stream_once(stack: Stack) -> str:
    grant = stack.negotiate()
    body = {"messages": [{"role": "user", "content": "Say hi."}], "stream": True, "max_tokens": 8}
    text = []
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {grant['token']}"}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices", []):
                    text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


def test_dripping_anonymous_bodies_hold_no_memory_and_block_no_stream(stack: Stack) -> None:
    gate = _gate_pid(stack)
    _stream_once(stack)  # warm: the first stream's allocations are not the drip's
    before = rss_kib(gate)
    stop = threading.Event()
    opened: list[int] = []
    threads = [threading.Thread(target=_drip, args=(stack.port, stop, opened), daemon=True)
               for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    peak = before
    streamed = []
    try:
        deadline = time.monotonic() + DRIP_SECONDS
        while time.monotonic() < deadline:
            streamed.append(_stream_once(stack))
            peak = max(peak, rss_kib(gate))
            time.sleep(0.5)
        peak = max(peak, rss_kib(gate))
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    assert len(opened) == CONNECTIONS
    assert streamed and all(streamed), streamed
    assert peak - before < LIMIT_KIB, f"the gate grew by {(peak - before) // 1024} MB"
