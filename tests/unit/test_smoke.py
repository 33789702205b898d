"""``setup`` proves a binary before trusting it, and a crash reaches the user as a crash with a remedy.

Stand-ins play llama-server here (a real one runs in tests/real/test_smoke_real.py): one crashes with
SIGSEGV after it listens, the way the AMX build did, unless started with ``--no-repack``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llama_launcher import build, model
from llama_launcher.smoke import remedy

STANDIN = Path(__file__).parent / "standins" / "fake_llama_server.py"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache that already holds the default model (a file with the GGUF magic), so nothing downloads."""
    cache = tmp_path / "cache"
    path = model.default_model_path(cache)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return cache


def _write_standin(binary: Path) -> None:
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    binary.chmod(0o755)


def _cached_standin(cache: Path) -> Path:
    """The stand-in installed as this machine's current, not yet proven build."""
    plan = build.plan_build()
    folder = build.build_dir(cache, plan.version)
    folder.mkdir(parents=True)
    binary = folder / "llama-server"
    _write_standin(binary)
    (folder / build.BUILD_RECORD).write_text(json.dumps({"key": plan.key}))
    return binary


def _llama_direct(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLAMA_DIRECT_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    env.pop("LLAMA_SERVER", None)
    return subprocess.run([sys.executable, "-m", "llama_launcher.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_cached_build_that_crashes_fails_setup_and_is_not_marked_good(cache: Path) -> None:
    _cached_standin(cache)
    done = _llama_direct(cache, "setup")
    assert done.returncode == 2
    assert "llama-server crashed with SIGSEGV while loading the model" in done.stderr
    assert "llama-server said: ggml_backend_amx_mul_mat: repacked weights" in done.stderr
    assert "`llama-direct serve -- --no-repack`" in done.stderr
    assert "Traceback" not in done.stderr
    assert build.cache_state(cache, build.plan_build()) == "unproven"
    assert not (build.build_dir(cache) / build.PROVEN_MARK).exists()


def test_the_remedy_works_as_written_and_then_the_build_is_marked_good(cache: Path) -> None:
    _cached_standin(cache)
    done = _llama_direct(cache, "setup", "--", "--no-repack")
    assert done.returncode == 0, done.stderr
    assert "it runs" in done.stderr
    assert build.cache_state(cache, build.plan_build()) == "good"
    mark = json.loads((build.build_dir(cache) / build.PROVEN_MARK).read_text())
    assert mark["extra_args"] == ["--no-repack"]


def test_a_named_binary_that_crashes_fails_setup_with_the_same_clear_error(cache: Path, tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    _write_standin(binary)
    done = _llama_direct(cache, "setup", "--llama-server", str(binary))
    assert done.returncode == 2
    assert "crashed with SIGSEGV while loading the model (llama-server from --llama-server" in done.stderr
    assert "--no-repack" in done.stderr


def test_doctor_runs_the_binary_and_reports_the_crash(cache: Path, tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    _write_standin(binary)
    crashed = _llama_direct(cache, "doctor", "--llama-server", str(binary))
    assert crashed.returncode == 1
    assert "FAIL  llama-server crashed with SIGSEGV while loading the model" in crashed.stdout
    fine = _llama_direct(cache, "doctor", "--llama-server", str(binary), "--", "--no-repack")
    assert fine.returncode == 0, fine.stdout
    assert "ok    llama-server loads the default model and generates a token" in fine.stdout


def test_the_remedy_depends_on_the_cause() -> None:
    assert "--no-repack" in remedy(-11, [], "PATH")
    assert "`llama-direct serve -- --ctx 512 --no-repack`" in remedy(-4, ["--ctx", "512"], "PATH")
    assert "--no-repack" not in remedy(-11, ["--no-repack"], "PATH")  # already tried: another binary
    assert "--no-repack" not in remedy(1, [], "PATH")  # an exit, not a crash
    assert "rebuild" in remedy(1, [], "cache") and "rebuild" not in remedy(1, [], "PATH")
