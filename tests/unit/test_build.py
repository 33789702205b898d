"""The build's options and cache, checked on any CPU: the AMX kernels are compiled out of every build.

An AMD machine cannot show the AMX crash, and a symbol check of an AMD build passes with or without
the fix (the kernels are compiled only when the compiler defines ``__AMX_INT8__``). So these tests
replay the build's own flags with ``-march=sapphirerapids`` in place of ``-march=native`` and ask the
compiler what it would enable on an AMX CPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llama_launcher import build

X86_FLAGS = "fpu sse sse2 avx avx2 avx512f avx512_vnni amx_tile amx_int8 amx_bf16"


def _compiler_macros(flags: list[str]) -> set[str]:
    done = subprocess.run(["g++", "-dM", "-E", "-x", "c++", "/dev/null", *flags],
                          capture_output=True, text=True, check=True)
    return {line.split()[1] for line in done.stdout.splitlines() if line.startswith("#define ")}


def _cxx_flags(options: tuple[str, ...]) -> list[str]:
    """What CMake puts before ggml's own flags: CMAKE_CXX_FLAGS, split as a shell would."""
    for option in options:
        if option.startswith("-DCMAKE_CXX_FLAGS="):
            return option.removeprefix("-DCMAKE_CXX_FLAGS=").split()
    return []


needs_sapphirerapids = pytest.mark.skipif(
    shutil.which("g++") is None
    or subprocess.run(["g++", "-march=sapphirerapids", "-E", "-x", "c++", "/dev/null"],
                      capture_output=True).returncode != 0,
    reason="needs a g++ that knows -march=sapphirerapids (GCC 11+)",
)


@needs_sapphirerapids
def test_the_build_flags_define_no_amx_on_an_amx_cpu() -> None:
    flags = _cxx_flags(build.cmake_options("x86_64", compiler_accepts_no_amx=True))
    macros = _compiler_macros([*flags, "-march=sapphirerapids"])
    assert "__AMX_INT8__" not in macros and "__AMX_TILE__" not in macros
    # The rest of the native code stays: AVX-512 VNNI and AVX2 drive the repacked CPU kernels.
    assert {"__AVX512VNNI__", "__AVX512F__", "__AVX2__"} <= macros


@needs_sapphirerapids
def test_without_the_fix_the_same_replay_enables_amx() -> None:
    """The replay can fail: with no flags of ours, sapphirerapids turns the AMX kernels on."""
    assert "__AMX_INT8__" in _compiler_macros(["-march=sapphirerapids"])


def test_only_x86_gets_the_amx_flags_and_only_from_a_compiler_that_knows_them() -> None:
    assert "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in build.cmake_options("x86_64", True)
    assert "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in build.cmake_options("x86_64", True)
    assert build.cmake_options("aarch64", True) == build.BASE_CMAKE_OPTIONS
    assert build.cmake_options("x86_64", False) == build.BASE_CMAKE_OPTIONS


def test_the_cache_key_follows_options_and_cpu_features() -> None:
    options = build.cmake_options("x86_64", True)
    amd = build.cpu_features(f"processor\t: 0\nflags\t\t: {X86_FLAGS.replace(' amx_tile amx_int8 amx_bf16', '')}\n")
    intel = build.cpu_features(f"processor\t: 0\nflags\t\t: {X86_FLAGS}\n")
    assert "amx_int8" in intel and "amx_int8" not in amd
    key = build.cache_key("1", options, "x86_64", amd)
    assert key == build.cache_key("1", options, "x86_64", tuple(reversed(amd)))
    assert key != build.cache_key("1", options, "x86_64", intel)
    assert key != build.cache_key("1", build.BASE_CMAKE_OPTIONS, "x86_64", amd)
    assert key != build.cache_key("2", options, "x86_64", amd)
    assert build.cpu_features("Features\t: fp asimd sve\n") == ("asimd", "fp", "sve")


def test_compile_flags_keep_what_shapes_code_and_drop_files() -> None:
    argv = ["/usr/bin/c++", "-DGGML_USE_CPU", "-I/src/ggml/include", "-mno-amx-int8", "-O3", "-march=native",
            "-MD", "-MT", "x.o", "-MF", "x.o.d", "-o", "x.o", "-c", "/src/ggml-cpu/amx/mmq.cpp"]
    assert build.compile_flags(argv) == ["-DGGML_USE_CPU", "-mno-amx-int8", "-O3", "-march=native"]


def _plan(key: str = "k1") -> build.BuildPlan:
    return build.BuildPlan(version="9", cmake_options=build.BASE_CMAKE_OPTIONS, key=key)


def _fake_build(folder: Path, key: str) -> None:
    folder.mkdir(parents=True)
    (folder / "llama-server").write_text("#!/bin/sh\n")
    (folder / "llama-server").chmod(0o755)
    (folder / build.BUILD_RECORD).write_text(json.dumps({"key": key}))


def test_cache_state_trusts_only_a_current_proven_build(tmp_path: Path) -> None:
    plan = _plan()
    folder = build.build_dir(tmp_path, "9")
    assert build.cache_state(tmp_path, plan) == "missing"
    _fake_build(folder, "k1")
    assert build.cache_state(tmp_path, plan) == "unproven"
    build.mark_proven(tmp_path, plan, ["--no-repack"])
    assert build.cache_state(tmp_path, plan) == "good"
    assert build.cache_state(tmp_path, _plan("k2")) == "stale"
    (folder / build.BUILD_RECORD).unlink()  # a build from before keys
    assert build.cache_state(tmp_path, plan) == "stale"


def test_a_stale_build_is_replaced_in_place_with_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = build.build_dir(tmp_path, "9")
    _fake_build(old, "old-key")
    (old / "stale-file").write_text("x")
    calls: list[str] = []

    def fake_build_in(work: Path, plan: build.BuildPlan) -> Path:
        calls.append(plan.key)
        staging = work / "install"
        _fake_build(staging, plan.key)
        return staging

    monkeypatch.setattr(build, "_build_in", fake_build_in)
    monkeypatch.setattr(build, "missing_build_tools", lambda: [])
    build.build(tmp_path, _plan("new-key"))
    build.build(tmp_path, _plan("new-key"))  # once only
    assert calls == ["new-key"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["llama-server-9"]
    assert not (old / "stale-file").exists()
    assert build.cache_state(tmp_path, _plan("new-key")) == "unproven"
    assert "rebuilding it once" in capsys.readouterr().err
