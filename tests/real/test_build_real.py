"""The llama-server this test run uses, if it is the cached build: its flags and its proof.

The build's own compile line for ggml's CPU backend is recorded when it is built. Replayed with
``-march=sapphirerapids`` in place of ``-march=native``, it must not enable the AMX kernels, while
keeping AVX-512: that is the property an AMX machine needs, checked on whatever CPU runs the tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llama_launcher import build, smoke
from llama_launcher.paths import cache_dir


@pytest.fixture(scope="module")
def record(llama_server_binary: Path) -> dict[str, object]:
    plan = build.plan_build()
    if llama_server_binary != build.build_dir(cache_dir(), plan.version) / "llama-server":
        pytest.skip("the tests use a llama-server from outside the cache; its build flags are not ours")
    found = build.read_record(llama_server_binary.parent)
    assert found is not None
    return found


def test_the_cached_build_is_current_and_proven(record: dict[str, object]) -> None:
    assert build.cache_state(cache_dir(), build.plan_build()) == "good"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to replay the flags")
def test_the_recorded_ggml_cpu_flags_enable_no_amx_on_an_amx_cpu(record: dict[str, object]) -> None:
    flags = [str(flag) for flag in record["ggml_cpu_compile"]]  # type: ignore[union-attr]  # a JSON list
    assert "-march=native" in flags, "the build is native: the rest of the CPU's features stay on"
    replay = ["-march=sapphirerapids" if flag == "-march=native" else flag for flag in flags
              if flag != "-mtune=native"]
    done = subprocess.run(["g++", "-dM", "-E", "-x", "c++", "/dev/null", *replay],
                          capture_output=True, text=True, check=True)
    macros = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("#define ")}
    assert "__AMX_INT8__" not in macros
    assert {"__AVX512VNNI__", "__AVX512F__", "__AVX2__"} <= macros


def test_a_good_binary_passes_the_smoke_run(llama_server_binary: Path, model_path: Path) -> None:
    smoke.prove(llama_server_binary, model_path, [], "cache")
