"""Find llama-server: the documented resolution order, and what a binary says of itself.

The order is a pure function (:func:`resolve`). The cached build counts only when it was built for
this CPU with today's options and has been proven by a smoke run (:mod:`llama_launcher.build`,
:mod:`llama_launcher.smoke`); anything else there is rebuilt or re-proven, never trusted as is.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from llama_launcher.errors import BinaryNotFound

_VERSION = re.compile(r"^version:\s*(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Found:
    path: Path
    source: str  # "--llama-server", "LLAMA_SERVER", "PATH" or "cache"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def resolve(
    explicit: str | None,
    env: Mapping[str, str],
    which: Callable[[str], str | None],
    cache_good: Callable[[], Path | None],
) -> Found | None:
    """The first llama-server in the documented order, or None when the cache must be built or proven.

    An explicit choice that is wrong is an error, not a reason to silently pick another binary.
    ``cache_good`` answers the cached binary only when it is current and proven.
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
    cached = cache_good()
    if cached is not None:
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
