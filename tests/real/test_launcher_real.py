"""The launcher against a real llama-server and the real SmolLM2 model."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llama_direct.redaction import install
from llama_launcher.bench.processes import alive
from llama_launcher.errors import StartError
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = pytest.mark.real
CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "stream": True}


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """What a real deployment writes: a root handler, which gets the redaction filter on install."""
    install()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def options(llama_server_binary: Path, model_path: Path) -> ServerOptions:
    return ServerOptions(binary=llama_server_binary, model=model_path, alias="smollm2", max_tokens=64)


@pytest.fixture
def server(options: ServerOptions) -> Iterator[LlamaServer]:
    runtime = make_runtime_dir()
    launched = LlamaServer(options, runtime)
    launched.start()
    launched.wait_ready(timeout=120, show_progress=False)
    yield launched
    launched.stop()


def _client(server: LlamaServer) -> httpx.Client:
    """No keep-alive: llama-server drops a kept-alive connection after a stream without saying so."""
    assert isinstance(server.address, str)
    return httpx.Client(transport=httpx.HTTPTransport(uds=server.address), base_url="http://llama", timeout=60,
                        headers={"Connection": "close"})


def _key(server: LlamaServer) -> str:
    return server.authorization().removeprefix(b"Bearer ").decode()


def test_authenticated_request_streams_and_others_get_401(server: LlamaServer) -> None:
    with _client(server) as client:
        chunks = 0
        with client.stream("POST", "/v1/chat/completions", json=CHAT,
                           headers={"Authorization": server.authorization().decode()}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            chunks = sum(1 for line in response.iter_lines() if line.startswith("data: {"))
        assert chunks >= 2
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
        wrong = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer wrong-key"})
        assert wrong.status_code == 401


def test_socket_dir_is_private(server: LlamaServer) -> None:
    assert isinstance(server.address, str)
    assert (Path(server.address).parent.stat().st_mode & 0o777) == 0o700


def test_key_never_on_any_argv_nor_in_logs_nor_files(options: ServerOptions, captured_logs: io.StringIO) -> None:
    runtime = make_runtime_dir()
    launched = LlamaServer(options, runtime)
    launched.start()
    launched.wait_ready(timeout=120, show_progress=False)
    try:
        key = _key(launched)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert key.encode() not in cmdline
        try:
            raise RuntimeError(f"forced failure holding {launched.authorization().decode()}")
        except RuntimeError:
            logging.getLogger("llama_direct.test").exception("forced exception path %s", key)
        for path in runtime.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes()
    finally:
        launched.stop()
    text = captured_logs.getvalue()
    assert "forced exception path [redacted]" in text
    assert "llama-server ready" in text
    assert key not in text


def test_forced_start_failure_reports_code_and_redacted_lines(
    options: ServerOptions, captured_logs: io.StringIO
) -> None:
    broken = ServerOptions(binary=options.binary, model=options.model, alias="x",
                           extra_args=("--ctx-size", "not-a-number"))
    launched = LlamaServer(broken, make_runtime_dir(), listen="unix")
    launched.start()
    key = _key(launched)
    with pytest.raises(StartError) as failed:
        launched.wait_ready(timeout=60, show_progress=False)
    launched.stop()
    assert failed.value.exit_code not in (None, 0)
    assert failed.value.last_lines
    assert str(failed.value).startswith("llama-server exited with code")
    assert key not in captured_logs.getvalue()
    assert all(key not in line for line in failed.value.last_lines)


def test_kill_9_respawns_with_a_new_key(server: LlamaServer) -> None:
    """supervise() runs on this (the spawning) thread, as in the gate: PR_SET_PDEATHSIG follows that thread."""
    import threading

    old_key, old_pid = _key(server), server.pid
    assert old_pid is not None
    stop = threading.Event()
    seen: dict[str, object] = {}

    def kill_then_watch() -> None:
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (server.pid != old_pid and server.is_ready()):
            time.sleep(0.05)
        seen["pid"], seen["ready"], seen["key"] = server.pid, server.is_ready(), _key(server)
        with _client(server) as client:
            seen["fresh"] = client.post("/v1/chat/completions", json={**CHAT, "stream": False},
                                        headers={"Authorization": server.authorization().decode()}).status_code
            seen["stale"] = client.post("/v1/chat/completions", json=CHAT,
                                        headers={"Authorization": f"Bearer {old_key}"}).status_code
        stop.set()

    watcher = threading.Thread(target=kill_then_watch, daemon=True)
    watcher.start()
    server.supervise(stop)
    watcher.join(5)
    assert seen["pid"] != old_pid and seen["ready"] is True
    assert seen["key"] != old_key
    assert (seen["fresh"], seen["stale"]) == (200, 401)
    assert server.restarts == 1


def test_restart_comes_back_ready_with_a_new_key(server: LlamaServer) -> None:
    old_key, old_pid = _key(server), server.pid
    server.restart()
    assert server.is_ready() and server.pid != old_pid
    assert old_pid is not None and _wait_gone(old_pid, 1)
    assert _key(server) != old_key
    with _client(server) as client:
        fresh = client.post("/v1/chat/completions", json={**CHAT, "stream": False},
                            headers={"Authorization": server.authorization().decode()})
        stale = client.post("/v1/chat/completions", json={**CHAT, "stream": False},
                            headers={"Authorization": f"Bearer {old_key}"})
    assert (fresh.status_code, stale.status_code) == (200, 401)


def test_stop_kills_a_server_that_ignores_sigterm(server: LlamaServer) -> None:
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    started = time.monotonic()
    server.stop(grace=0.5)
    assert _wait_gone(pid, 1)
    assert time.monotonic() - started < 5


def test_stop_leaves_no_process(options: ServerOptions) -> None:
    launched = LlamaServer(options, make_runtime_dir())
    launched.start()
    launched.wait_ready(timeout=120, show_progress=False)
    pid = launched.pid
    assert pid is not None and alive(pid)
    launched.stop()
    assert _wait_gone(pid, 1)
    assert not Path(launched.socket_path).exists()


def test_sigkill_of_the_parent_takes_llama_server_down(options: ServerOptions, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from llama_launcher.paths import make_runtime_dir
        from llama_launcher.server_args import ServerOptions
        from llama_launcher.server_process import LlamaServer
        s = LlamaServer(ServerOptions(binary=Path({str(options.binary)!r}), model=Path({str(options.model)!r}),
                                      alias="x"), make_runtime_dir())
        s.start(); s.wait_ready(timeout=120, show_progress=False)
        print(s.pid, flush=True)
        time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert alive(child_pid)
        parent.kill()
        parent.wait(10)
        assert _wait_gone(child_pid, 10), "llama-server outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--", "--api-key", "x"], "refusing extra llama-server argument --api-key:"),
        (["--model", "/nonexistent/model.gguf"], "model file not found: /nonexistent/model.gguf"),
    ],
)
def test_cli_errors_are_one_line(extra: list[str], expected: str, llama_server_binary: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llama_launcher.cli", "serve", "--port", "0", "--data-dir", str(tmp_path),
         "--llama-server", str(llama_server_binary), *extra],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"llama-direct: error: {expected}")
    assert done.stderr.count("\n") == 1


def test_cli_refuses_a_non_gguf_model(llama_server_binary: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_text("hello")
    done = subprocess.run(
        [sys.executable, "-m", "llama_launcher.cli", "serve", "--port", "0", "--data-dir", str(tmp_path / "d"),
         "--llama-server", str(llama_server_binary), "--model", str(fake)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("llama-direct: error: not a GGUF model")
    assert done.stderr.count("\n") == 1
