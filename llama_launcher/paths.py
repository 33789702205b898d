"""Where the project keeps things: a per-user cache (builds, models) and a data dir (keys, ids)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

# The gate's last word to the parent: why it stopped for good (llama-server cannot start), written to
# the runtime dir, with the exit code that tells the parent not to restart it for the same cause.
GATE_FAILURE_FILE = "gate-failure.json"
GATE_EXIT_GAVE_UP = 3


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Rebuildable things: the llama-server build and the default model."""
    if env.get("LLAMA_DIRECT_CACHE"):
        return Path(env["LLAMA_DIRECT_CACHE"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "llama-direct"


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Signing keys, TLS keys and ids: kept outside the cache so clearing it loses no key."""
    base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else Path.home() / ".local" / "share"
    return base / "llama-direct"


def make_runtime_dir() -> Path:
    """A fresh private dir for the unix sockets: 0700, and short (a socket path must fit 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ld-"))
    path.chmod(0o700)
    return path
