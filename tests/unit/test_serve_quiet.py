"""A normal start and stop (issue 24): at most four lines on the terminal, the ready line among them,
nothing at the stop, and everything else in private log files in the data dir.

A user counted 24 lines before the ready line and 13 at the stop. The stand-in llama-server
starts at once with `--no-repack`, so this is a start with everything cached.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from llama_direct.runtime import LOGS_DIR, PROCESSES, log_file_path, parse_ready_line, parse_runtime_line

STANDIN = Path(__file__).parent / "standins" / "fake_llama_server.py"


def _standin(tmp_path: Path) -> tuple[Path, Path]:
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    binary.chmod(0o755)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    return binary, gguf


def test_a_normal_start_shows_four_lines_and_a_stop_none(tmp_path: Path) -> None:
    binary, gguf = _standin(tmp_path)
    data = tmp_path / "data"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = {**os.environ, "LLAMA_DIRECT_CACHE": str(tmp_path / "cache")}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_launcher.cli", "serve", "--port", "0", "--llama-server", str(binary),
             "--model", str(gguf), "--data-dir", str(data), "--", "--no-repack"],
            env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while parse_ready_line(out.read_text()) is None or "Ctrl-C" not in err.read_text():
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        time.sleep(1.0)  # anything the children would say just after the ready line
        at_ready = (out.read_text(), err.read_text())
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (out.read_text(), err.read_text()) == at_ready, "the stop printed something"
    ready = at_ready[0].splitlines()
    said = at_ready[1].splitlines()
    url = parse_ready_line(at_ready[0])
    assert len(ready) == 1 and url is not None
    assert len(ready) + len(said) <= 4
    log_dir = data / LOGS_DIR
    assert said == [
        f"llama-direct: serving m on {url.partition('/?')[0]}",
        f"llama-direct: logs in {log_dir} (serve.log, gate.log, broker.log)",
        "llama-direct: Ctrl-C stops",
    ]
    for process_name in PROCESSES:
        path = log_file_path(log_dir, process_name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        assert "level=WARNING" not in text and "level=ERROR" not in text, text
    serve_log = log_file_path(log_dir, "serve").read_text()
    assert parse_runtime_line(serve_log) is not None
    gate_log = log_file_path(log_dir, "gate").read_text()
    assert "server is listening on unix://" in gate_log  # llama-server's own lines go to the file
    assert "gate stopped code=0" in gate_log
