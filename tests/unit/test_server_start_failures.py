"""How `LlamaServer.wait_ready` reads an early exit, with small scripts standing in for llama-server."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from llama_launcher.errors import StartError
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import MAX_CONSECUTIVE_START_FAILURES, LlamaServer


def _fake(tmp_path: Path, body: str) -> tuple[ServerOptions, Path]:
    """A llama-server stand-in that appends its argv to `runs` and then does what `body` says."""
    runs = tmp_path / "runs"
    script = tmp_path / "llama-server"
    script.write_text(f'#!/bin/sh\necho "$*" >> {runs}\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    return ServerOptions(binary=script, model=model, alias="m"), runs


def test_bad_arguments_are_not_retried_on_tcp(tmp_path: Path) -> None:
    options, runs = _fake(tmp_path, 'echo "error: invalid argument: --frobnicate"; exit 1')
    server = LlamaServer(options, tmp_path)
    server.start()
    with pytest.raises(StartError) as failed:
        server.wait_ready(timeout=10, show_progress=False)
    assert failed.value.exit_code == 1
    assert any("invalid argument" in line for line in failed.value.last_lines)
    assert len(runs.read_text().splitlines()) == 1


def test_a_binary_that_cannot_bind_a_unix_socket_is_retried_on_tcp(tmp_path: Path) -> None:
    options, runs = _fake(
        tmp_path,
        'case "$*" in *.sock*) echo "couldn'"'"'t bind HTTP server socket, hostname: x.sock";; '
        '*) echo "error: model failed to load";; esac; exit 1',
    )
    server = LlamaServer(options, tmp_path)
    server.start()
    with pytest.raises(StartError) as failed:
        server.wait_ready(timeout=10, show_progress=False)
    first, second = runs.read_text().splitlines()
    assert "llama.sock" in first
    assert "--port 0" in second and "127.0.0.1" in second
    assert any("model failed to load" in line for line in failed.value.last_lines)


# llama-server binds its socket, prints where it listens, then loads the model: a crash while loading
# comes after a line that mentions the socket, which must not read as a bind failure.
_LISTENS = 'sock=$(echo "$*" | sed "s/.*--host \\([^ ]*\\).*/\\1/"); echo "main: server is listening on unix://$sock"'


@pytest.mark.parametrize(("signal_name", "word"), [("SEGV", "SIGSEGV"), ("ILL", "SIGILL")])
def test_a_crash_while_loading_is_called_a_crash_and_not_retried(
    tmp_path: Path, signal_name: str, word: str
) -> None:
    options, runs = _fake(tmp_path, f'{_LISTENS}; echo "load_tensors: loading model"; kill -{signal_name} $$')
    server = LlamaServer(options, tmp_path)
    server.start()
    with pytest.raises(StartError) as failed:
        server.wait_ready(timeout=10, show_progress=False)
    assert str(failed.value) == f"llama-server crashed with {word} while loading the model"
    assert failed.value.exit_code is not None and failed.value.exit_code < 0
    assert len(runs.read_text().splitlines()) == 1  # no TCP retry under a socket warning


def test_a_crash_before_listening_says_while_starting(tmp_path: Path) -> None:
    options, runs = _fake(tmp_path, "kill -SEGV $$")
    server = LlamaServer(options, tmp_path)
    server.start()
    with pytest.raises(StartError, match=r"^llama-server crashed with SIGSEGV while starting$"):
        server.wait_ready(timeout=10, show_progress=False)
    assert len(runs.read_text().splitlines()) == 1


def test_a_server_that_crashes_at_every_start_is_given_up_after_a_bounded_number_of_tries(
    tmp_path: Path,
) -> None:
    options, runs = _fake(tmp_path, f"{_LISTENS}; kill -SEGV $$")
    server = LlamaServer(options, tmp_path)
    server.start()  # as after a first start that served and then died: supervise respawns it
    with pytest.raises(StartError) as failed:
        server.supervise(threading.Event())
    assert "crashed with SIGSEGV while loading the model" in str(failed.value)
    assert f"{MAX_CONSECUTIVE_START_FAILURES} times in a row" in str(failed.value)
    assert len(runs.read_text().splitlines()) == 1 + MAX_CONSECUTIVE_START_FAILURES
