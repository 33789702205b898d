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
"""DEBUG with `serve --verbose`: everything, to the terminal as well as to the log files."""
LOG_DIR_ENV = "LLAMA_DIRECT_LOG_DIR"
"""Where each process writes its own log file (serve sets it to the data dir's `LOGS_DIR`)."""
LOG_FORMAT_ENV = "LLAMA_DIRECT_LOG_FORMAT"
"""`text` or `json` (`serve --log-format`): how the log files are written."""
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
ACCESS_TOKEN_FILE = "access-token"
"""The owner's access token in the data dir (0600): the same login link at every start, until
`llama-direct rotate-token` replaces it."""
SESSIONS_FILE = "sessions.json"
"""Login sessions by digest (`broker.session_file`); `rotate-token` removes it, logging every browser out."""
USERS_DB_FILE = "users.sqlite3"
"""Named users, their secrets' digests and the revocations their changes leave (`llama_direct.user_store`),
in the data dir (0600); in a fleet they live in Redis instead."""
LLAMA_GROUP_FILE = "llama-server-group.json"
"""llama-server's process group and binary, written by the gate, read by the supervisor if the gate
dies: the children a router started must not outlive it (`llama_launcher.process_group`)."""
"""The gate's last word to the parent: why it stopped for good (llama-server cannot start)."""
GATE_EXIT_GAVE_UP = 3
PROCESSES = ("serve", "gate", "broker")
"""serve's processes, each with a log file of its own."""
LOGS_DIR = "logs"
"""In the data dir (the runtime dir is gone after a stop): one file per process, `<process>.log`."""
"""The gate's exit code that tells the parent not to restart it for the same cause."""

_READY = re.compile(r"llama-direct ready: (?P<url>https?://\S+)")
_RUNTIME = re.compile(r"runtime dir=(?P<path>\S+) public=(?P<host>\S+):(?P<port>\d+)(?: url=(?P<url>\S+))?")


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
    url: str | None = None
    """The base of the login link as serve prints it (`--public-url`, else the scheme, host and port),
    for `llama-direct users` to print a user's link the same way."""


def log_file_path(log_dir: Path, process: str) -> Path:
    """One process's log file (`serve`, `gate`, `broker`): each process its own, so rotations never race."""
    return log_dir / f"{process}.log"


def serve_log_path(data_dir: Path) -> Path:
    """serve's own log file, which holds its runtime line: where readers look for it now that the
    terminal is quiet."""
    return log_file_path(data_dir / LOGS_DIR, "serve")


def read_serve_log(data_dir: Path) -> str:
    """serve's log file so far ("" before it exists): the runtime line is there, not on the terminal."""
    try:
        return serve_log_path(data_dir).read_text(errors="replace")
    except OSError:
        return ""


def format_runtime_line(path: Path, host: str, port: int, url: str | None = None) -> str:
    """The log line that names the runtime dir (no secret: the dir holds sockets and settings only)."""
    line = f"runtime dir={path} public={host}:{port}"
    return f"{line} url={url}" if url else line


def parse_runtime_line(text: str) -> RuntimeLine | None:
    """The first runtime line in `text` (a run's own output)."""
    return _runtime(_RUNTIME.search(text))


def last_runtime_line(text: str) -> RuntimeLine | None:
    """The latest runtime line in `text` (serve's log holds one per start): where serve runs now, if it does."""
    matches = list(_RUNTIME.finditer(text))
    return _runtime(matches[-1] if matches else None)


def _runtime(match: re.Match[str] | None) -> RuntimeLine | None:
    if match is None:
        return None
    return RuntimeLine(Path(match.group("path")), match.group("host"), int(match.group("port")), match.group("url"))


# A lane started from an app's code (`llama_launcher.lane`): one per data dir, shared by the app's workers.
LANE_FILE = "lane.json"
"""In the data dir while a lane serves: its URL, its lease socket, and the settings its broker half runs
with, so another worker of the app attaches to it instead of starting a second one."""
LANE_START_LOCK = "lane-start.lock"
"""In the data dir: held by whichever worker is attaching or starting, so two never start two lanes."""
LEASE_SOCKET = "lane.sock"
"""In the lane's runtime dir: each app process holds a connection; the lane stops when the last one goes."""
LANE_LEASE_FD_ENV = "LLAMA_DIRECT_LANE_LEASE_FD"
"""The lane process's first lease, inherited from the process that started it."""
LANE_READY_FD_ENV = "LLAMA_DIRECT_LANE_READY_FD"
"""Where the lane process writes its lane document (or why it could not start), once, then closes."""
