"""Faults with the real stack: `llama-direct serve`, a real llama-server and SmolLM2.

What each test observed when it was written (2 cores) is in its docstring; the assertions hold
the parts the design promises.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from stack import Stack, run_stack

from llama_launcher.bench.processes import children, cmdline, state, stop_process

pytestmark = [pytest.mark.real, pytest.mark.timeout(240)]

SHORT = {"messages": [{"role": "user", "content": "Say hi."}], "stream": True, "max_tokens": 8}
LONG = {"messages": [{"role": "user", "content": "Write a long story about a lighthouse."}], "stream": True,
        "max_tokens": 1500}


# -- processes -------------------------------------------------------------------------------------


def child_running(parent: int, marker: str) -> int | None:
    """The live child of `parent` whose command line holds `marker` (zombies excluded)."""
    for pid in children(parent):
        if marker in " ".join(cmdline(pid)) and state(pid) not in ("gone", "Z"):
            return pid
    return None


def wait_for(what: str, check: Callable[[], Any], seconds: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError, KeyError):
            value = check()
            if value:
                return value
        time.sleep(step)
    raise AssertionError(f"{what}: not within {seconds} s")


def gate_pid(stack: Stack) -> int:
    return wait_for("the gate process", lambda: child_running(stack.process.pid, "llama_launcher.gate_process"), 15)


def broker_pid(stack: Stack) -> int:
    return wait_for("the broker process", lambda: child_running(stack.process.pid, "-m broker"), 15)


def llama_pid(stack: Stack) -> int:
    return wait_for("llama-server", lambda: child_running(gate_pid(stack), "llama-server"), 15)


def master_key(pid: int) -> str:
    """llama-server's key, read the way any process of the same user could: from its environment."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(item.split(b"=", 1)[1].decode() for item in environ if item.startswith(b"LLAMA_API_KEY="))


def negotiate_supported(stack: Stack, seconds: float = 15) -> dict[str, Any]:
    """A supported grant. The broker learns that the model is ready from its own 0.5 s health poll,
    so the first negotiations after a (re)start may say `model_loading`, and while the broker itself
    restarts the gate answers 502; this waits both out."""
    return wait_for("a supported negotiation", lambda: _supported(stack), seconds, 0.1)


def _supported(stack: Stack) -> dict[str, Any] | None:
    answer = httpx.post(f"{stack.base}/direct-stream", headers={"Authorization": f"Bearer {stack.access_token}"},
                        timeout=10)
    if answer.status_code != 200 or not answer.json().get("supported"):
        return None
    return dict(answer.json())


def stream_lines(grant: dict[str, Any], body: dict[str, Any] = SHORT, timeout: float = 60) -> tuple[int, list[str]]:
    headers = {"Authorization": f"Bearer {grant['token']}"}
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body, headers=headers,
                      timeout=timeout) as response:
        return response.status_code, list(response.iter_lines())


@pytest.fixture
def stack(llama_server_binary: Path, model_path: Path) -> Iterator[Stack]:
    """A stack per test: each of these tests breaks it on purpose."""
    with run_stack("--llama-server", str(llama_server_binary), "--verbose") as running:
        yield running


# -- llama-server killed mid-stream -------------------------------------------------------------


def test_kill_9_llama_server_mid_stream(stack: Stack) -> None:
    """Observed: the stream is cut within 50 ms (httpx reports an incomplete chunked body, no
    `[DONE]`), the gate's launcher respawns llama-server after its 0.5 s back-off with a new key, a
    new negotiation is supported about 4 s after the kill and has streamed to its end by about 6 s,
    and a token minted before the crash still streams: the gate swaps the key, not the token."""
    before = negotiate_supported(stack)
    grant = negotiate_supported(stack)
    old_pid = llama_pid(stack)
    old_key = master_key(old_pid)
    headers = {"Authorization": f"Bearer {grant['token']}"}
    received: list[str] = []
    ended_by: str | None = None
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=LONG, headers=headers,
                      timeout=httpx.Timeout(60, read=10)) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        try:
            for line in lines:
                received.append(line)
                if line.startswith('data: {"choices":[{"finish_reason":null') and '"content":"' in line:
                    break
            killed_at = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            received.extend(lines)
            ended_by = "end of body"
        except httpx.RemoteProtocolError:
            ended_by = "truncated chunked body"
        except httpx.ReadTimeout:
            ended_by = "hang"
    assert ended_by in ("end of body", "truncated chunked body"), ended_by
    assert "data: [DONE]" not in received, "the stream claimed to finish although llama-server was killed"
    assert time.monotonic() - killed_at < 5

    new_pid = wait_for("a respawned llama-server", lambda: (p := llama_pid(stack)) != old_pid and p, 15)
    assert master_key(new_pid) != old_key
    # The broker reads the gate's health at most a poll (0.5 s while asked) late, and the respawn comes
    # after a 0.5 s back-off, so a negotiation at the respawn may still be granted from the health read
    # before the crash (its stream would meet a llama-server not yet listening, 502, and the client
    # would fall back). A user's next message comes later; the test waits for the broker to have seen
    # the crash, then for the respawned server.
    wait_for("the broker seeing the crash", lambda: _supported(stack) is None, 15 - (time.monotonic() - killed_at))
    fresh = negotiate_supported(stack, seconds=15 - (time.monotonic() - killed_at))
    first_token_at: float | None = None
    lines_after: list[str] = []
    with httpx.stream("POST", fresh["url"] + "/v1/chat/completions", json=SHORT, timeout=60,
                      headers={"Authorization": f"Bearer {fresh['token']}"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if first_token_at is None and '"content":"' in line:
                first_token_at = time.monotonic()
            lines_after.append(line)
    assert "data: [DONE]" in lines_after
    assert first_token_at is not None and first_token_at - killed_at < 15, "no token within 15 s of the kill"

    assert time.time() < before["expires_at"], "the token minted before the crash expired before it was tried"
    status, lines_before = stream_lines(before)
    assert status == 200 and "data: [DONE]" in lines_before


# -- the broker killed ------------------------------------------------------------------------------


def test_kill_9_broker_keeps_the_signing_keys_and_outstanding_tokens(stack: Stack) -> None:
    """Observed: the parent restarts the broker after 0.5 s; it loads the same key from
    `<data dir>/keys/`, so the JWKS is unchanged and a token minted before the crash streams."""
    grant = negotiate_supported(stack)
    keys_before = sorted(p.name for p in (stack.data_dir / "keys").glob("*.pem"))
    kid = _kid(grant["token"])
    old = broker_pid(stack)
    os.kill(old, signal.SIGKILL)
    wait_for("a new broker", lambda: (p := broker_pid(stack)) != old and p, 15)
    after = negotiate_supported(stack)
    assert _kid(after["token"]) == kid
    assert sorted(p.name for p in (stack.data_dir / "keys").glob("*.pem")) == keys_before
    status, lines = stream_lines(grant)
    assert status == 200 and "data: [DONE]" in lines


def _kid(token: str) -> str:
    import base64

    segment = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))["kid"])


# -- the gate killed --------------------------------------------------------------------------------


def test_kill_9_gate_waits_in_the_backlog_then_goes_direct_again(stack: Stack) -> None:
    """Observed: with the gate dead, a connection to the public port is still accepted (the parent
    holds the listening socket) and its request waits in the backlog; once the parent has restarted
    the gate (0.5 s back-off), it is answered, about 0.9 s after the kill. llama-server dies with the
    gate (PR_SET_PDEATHSIG) and the new gate starts a new one; meanwhile negotiation answers 200
    unsupported (`gate_down` until the broker's 0.5 s poll reaches the new gate, then
    `model_loading`), and about 2.4 s after the kill it is supported again and streams. No request
    was refused at the TCP level. A token minted before the restart is refused as
    `token_predates_gate`: the new gate's replay cache is empty, as the design says."""
    old_grant = negotiate_supported(stack)
    time.sleep(1.1)  # the new gate starts in a later second than the old token's iat
    old_gate, old_llama = gate_pid(stack), llama_pid(stack)
    os.kill(old_gate, signal.SIGKILL)
    killed_at = time.monotonic()
    waiting = httpx.get(stack.base + "/.well-known/jwks.json", timeout=30)
    waited = time.monotonic() - killed_at
    assert waiting.status_code == 200 and waiting.json()["keys"], "a request sent meanwhile was lost"
    assert waited < 15
    wait_for("the old llama-server to die with its gate", lambda: state(old_llama) in ("gone", "Z"), 10)
    assert gate_pid(stack) != old_gate
    fresh = negotiate_supported(stack, seconds=30)
    status, lines = stream_lines(fresh)
    assert status == 200 and "data: [DONE]" in lines
    refused = httpx.post(old_grant["url"] + "/v1/chat/completions", json=SHORT, timeout=30,
                         headers={"Authorization": f"Bearer {old_grant['token']}"})
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "The token was issued before the server restarted: ask for a new one."


# -- llama-server slow to load ----------------------------------------------------------------------


PUBLIC = re.compile(r"public=127\.0\.0\.1:(\d+)")


class LoadingUpstream:
    """A stand-in for a llama-server that is still loading its model: attach mode puts the gate in front of it.

    This simulates a slow load honestly at the one place the stack can see it: llama-server's own
    `/health` answers `503 {"error": {"message": "Loading model", ...}}` until its model is loaded
    (llama-server's documented behaviour), here until `loaded` is set.
    """

    def __init__(self) -> None:
        self.loaded = threading.Event()
        loaded = self.loaded

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/health" and not loaded.is_set():
                    self._json(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
                elif self.path == "/health":
                    self._json(200, {"status": "ok"})
                elif self.path == "/props":
                    self._json(200, {"modalities": {"vision": False}})
                elif self.path == "/slots":
                    self._json(200, [{"id": 0, "is_processing": False}])
                else:
                    self._json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

            def _json(self, status: int, value: object) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoadingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_slow_loading_model_negotiates_unsupported_model_loading() -> None:
    """Observed: before the model is loaded, serve prints no ready line, the public port already
    answers, and negotiation says unsupported with reason `model_loading`; once `/health` turns 200
    the ready line appears and negotiation is supported."""
    access = "faults-access-token-0123456789"
    data_dir = Path(tempfile.mkdtemp(prefix="ld-faults-"))
    log = tempfile.NamedTemporaryFile("w+b", prefix="ld-faults-", suffix=".log", delete=False)  # noqa: SIM115
    with LoadingUpstream() as upstream:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_launcher.cli", "serve", "--port", "0", "--data-dir", str(data_dir),
             "--upstream", f"http://127.0.0.1:{upstream.port}", "--model-alias", "loading-model", "--verbose"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "LLAMA_DIRECT_ACCESS_TOKEN": access, "LLAMA_DIRECT_UPSTREAM_KEY": "k" * 32},
        )
        try:
            found = wait_for("the public port", lambda: PUBLIC.search(Path(log.name).read_text()), 30)
            port = int(found.group(1))
            base = f"http://127.0.0.1:{port}"

            def negotiate() -> dict[str, Any] | None:
                """The answer, once the broker is up (until then the gate answers 502 for it) and has
                reached the gate (until then it says `gate_down`, as it should)."""
                answer = httpx.post(base + "/direct-stream", headers={"Authorization": f"Bearer {access}"}, timeout=5)
                if answer.status_code != 200 or answer.json().get("reason") == "gate_down":
                    return None
                return dict(answer.json())

            loading = wait_for("an answer while loading", negotiate, 30, 0.2)
            assert loading == {"supported": False, "route": "chat", "reason": "model_loading",
                               "message": "The model is still loading.", "fallback_url": "/v1/chat/completions"}
            assert "llama-direct ready:" not in Path(log.name).read_text()
            upstream.loaded.set()
            wait_for("the ready line", lambda: "llama-direct ready:" in Path(log.name).read_text(), 30)
            assert wait_for("a supported negotiation", lambda: (negotiate() or {}).get("supported"), 10, 0.1) is True
        finally:
            stop_process(process, 30, group=True)
            log.close()
            os.unlink(log.name)
            shutil.rmtree(data_dir, ignore_errors=True)



