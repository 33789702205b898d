"""No llama-server process outlives `serve` or the gate that started it (issue 25, finding 6).

Router mode, a reply streaming from a child llama-server, then the stop: Ctrl-C (SIGINT to serve's
process group), SIGTERM, SIGHUP, or the gate killed with SIGKILL. Before, the router ignored SIGTERM
for 5 s, was killed, and the child that was generating stayed alive with parent 1, on its loopback
port, with the key.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from stack import Stack, run_stack

from llama_launcher.bench.processes import child_running, cmdline, descendants

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

PHRASE = "the river ran past the old mill and the village children watched the boats go by in the morning"
WORDS = PHRASE.split()
LONG = {"messages": [{"role": "user", "content": " ".join(WORDS[i % len(WORDS)] for i in range(3500))}],
        "stream": True, "max_tokens": 2000, "model": "alpha"}
"""About 3,500 tokens of prompt: tens of seconds of prompt processing on a CPU, during which the child
llama-server is busy and does not act on a SIGTERM (what left it orphaned: on the old code the child
outlived serve by 4 to 30 s here, and in the finding by many minutes)."""


@pytest.fixture
def router(llama_server_binary: Path, model_path: Path, tmp_path: Path) -> Iterator[Stack]:
    preset = tmp_path / "models.ini"
    preset.write_text(f"[alpha]\nmodel = {model_path}\nctx-size = 4096\n")
    with run_stack("--llama-server", str(llama_server_binary), "--models-preset", str(preset)) as running:
        yield running


def _llama_servers(stack: Stack) -> list[int]:
    return [pid for pid in descendants(stack.process.pid) if "llama-server" in " ".join(cmdline(pid))[:300]]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy(stack: Stack) -> tuple[threading.Thread, list[int]]:
    """A long prompt, sent in a thread; returns once a child llama-server is working on it, with the
    llama-server processes serving it (the router and that child)."""
    grant = stack.negotiate(model="alpha", max_tokens=2000)

    def send() -> None:
        try:
            with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=LONG, timeout=300,
                              headers={"Authorization": f"Bearer {grant['token']}"}) as response:
                for _ in response.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    for _ in range(1200):
        servers = _llama_servers(stack)
        children = [pid for pid in servers if "--alias" in cmdline(pid)]
        if children and _cpu(children[0]) > 1.0:
            return sender, servers
        time.sleep(0.1)
    raise AssertionError("no child llama-server got to work on the prompt")


def _all_gone(pids: list[int], within: float = 5.0) -> list[int]:
    """The processes still alive `within` seconds from now. What stops them is SIGKILL, sent before
    serve (or the supervisor) goes on, so this is the kernel's teardown of a killed process, far under
    a second even on a loaded machine; a llama-server left running would still be busy with the
    prompt for tens of seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [pid for pid in pids if _alive(pid)]
        if not left:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stopping_serve_mid_reply_leaves_no_llama_server(router: Stack, signum: signal.Signals) -> None:
    reader, servers = _busy(router)
    if signum == signal.SIGINT:
        os.killpg(router.process.pid, signum)  # Ctrl-C: the terminal signals serve's whole group
    else:
        router.process.send_signal(signum)
    assert router.process.wait(60) == 0
    assert _all_gone(servers) == [], "a llama-server outlived serve"
    reader.join(30)


def test_a_gate_killed_mid_reply_takes_its_llama_servers_with_it(router: Stack) -> None:
    reader, servers = _busy(router)
    gate = child_running(router.process.pid, "llama_launcher.gate_process")
    os.kill(gate, signal.SIGKILL)
    assert _all_gone(servers) == [], "the dead gate's llama-servers lived on"
    reader.join(30)
    assert router.process.poll() is None, "serve goes on, with a new gate"
