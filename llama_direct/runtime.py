"""The names the parent, the broker and the gate agree on at run time: variables, files, log lines.

`llama-direct serve` writes them, the children and the tests read them; each is spelt once, here.
The ready line and the runtime-dir line each come with a `format_*` and a `parse_*` so the writer
and every reader (the bench, the real tests) cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Environment variables (what each child is told; no secret is ever in a file or argv).
RUNTIME_ENV = "LLAMA_DIRECT_RUNTIME"
BROKER_CONFIG_ENV = "LLAMA_DIRECT_BROKER_CONFIG"
ACCESS_TOKEN_ENV = "LLAMA_DIRECT_ACCESS_TOKEN"
ACCESS_TOKEN_FILE_ENV = "LLAMA_DIRECT_ACCESS_TOKEN_FILE"
"""Where a client (`llama_direct.sdk`) may read the access token from instead."""
UPSTREAM_KEY_ENV = "LLAMA_DIRECT_UPSTREAM_KEY"
UPSTREAM_KEYS_ENV = "LLAMA_DIRECT_UPSTREAM_KEYS"
"""The parent's hand-over to the gate: each `--upstream`'s key (or null), a JSON list, by position."""
PUBLIC_FD_ENV = "LLAMA_DIRECT_PUBLIC_FD"
APP_FD_ENV = "LLAMA_DIRECT_APP_FD"
LOG_LEVEL_ENV = "LLAMA_DIRECT_LOG_LEVEL"
CACHE_ENV = "LLAMA_DIRECT_CACHE"
REDIS_URL_ENV = "LLAMA_DIRECT_REDIS_URL"
"""Where the state several gates and brokers share lives (`redis://` or `rediss://`); may hold a password."""
LLAMA_API_KEY_ENV = "LLAMA_API_KEY"
"""llama-server's own variable for its key; never passed on to a child that is not llama-server."""

# Files and sockets in the runtime dir.
LLAMA_SOCKET = "llama.sock"
GATE_SOCKET = "gate.sock"
BROKER_SOCKET = "broker.sock"
CONTROL_SOCKET = "control.sock"
BROKER_CONFIG_FILE = "broker.json"
GATE_CONFIG_FILE = "gate.json"
LAUNCH_FILE = "launch.json"
GATE_FAILURE_FILE = "gate-failure.json"
"""The gate's last word to the parent: why it stopped for good (llama-server cannot start)."""
GATE_EXIT_GAVE_UP = 3
"""The gate's exit code that tells the parent not to restart it for the same cause."""

_READY = re.compile(r"llama-direct ready: (?P<url>https?://\S+)")
_RUNTIME = re.compile(r"runtime dir=(?P<path>\S+) public=(?P<host>\S+):(?P<port>\d+)")


def format_ready_line(url: str) -> str:
    """What serve prints on stdout once the lane is ready: the login URL, which carries the access token."""
    return f"llama-direct ready: {url}"


def parse_ready_line(text: str) -> str | None:
    """The URL of the first ready line in `text`, or None while there is none."""
    match = _READY.search(text)
    return match.group("url") if match else None


@dataclass(frozen=True)
class RuntimeLine:
    """Where serve put its runtime dir and which public address it bound."""

    path: Path
    host: str
    port: int


def format_runtime_line(path: Path, host: str, port: int) -> str:
    """The log line that names the runtime dir (no secret: the dir holds sockets and settings only)."""
    return f"runtime dir={path} public={host}:{port}"


def parse_runtime_line(text: str) -> RuntimeLine | None:
    match = _RUNTIME.search(text)
    if match is None:
        return None
    return RuntimeLine(Path(match.group("path")), match.group("host"), int(match.group("port")))
