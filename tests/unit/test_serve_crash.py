"""``serve`` with a llama-server that crashes while loading: the parent names the crash and stops.

It used to say "the gate process exited with code 3 while starting", and a gate that gave up while
serving was restarted forever. A stand-in crashes the way the AMX build did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llama_direct.runtime import GATE_FAILURE_FILE
from llama_launcher.supervisor import exit_cause

STANDIN = Path(__file__).parent / "standins" / "fake_llama_server.py"


def test_serve_names_the_crash_and_a_remedy_and_exits(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    binary.chmod(0o755)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    env = {**os.environ, "LLAMA_DIRECT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "llama_launcher.cli", "serve", "--port", "0", "--llama-server", str(binary),
         "--model", str(gguf), "--data-dir", str(tmp_path / "data")],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1
    last = done.stderr[done.stderr.index("llama-direct: error:"):]
    assert last.startswith("llama-direct: error: llama-server crashed with SIGSEGV while loading the model")
    assert "llama-server said: ggml_backend_amx_mul_mat" in last
    assert "`llama-direct serve -- --no-repack`" in last
    assert "exited with code 3" not in done.stderr
    assert "retrying on 127.0.0.1" not in done.stderr
    assert "ready:" not in done.stdout


def test_exit_cause_prefers_the_gates_report(tmp_path: Path) -> None:
    assert exit_cause(tmp_path, "gate", 3, "while serving") == "the gate process exited with code 3 while serving"
    (tmp_path / GATE_FAILURE_FILE).write_text(json.dumps(
        {"message": "llama-server crashed with SIGILL while loading the model", "last_lines": ["a", "b"],
         "remedy": "remedy: name another binary"}))
    assert exit_cause(tmp_path, "gate", 3, "while serving") == (
        "llama-server crashed with SIGILL while loading the model\n  llama-server said: a\n"
        "  llama-server said: b\n  remedy: name another binary")
    assert exit_cause(tmp_path, "broker", 1, "while starting") == "the broker process exited with code 1 while starting"
