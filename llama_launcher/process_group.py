"""llama-server and every process it starts live in one process group, which is stopped whole.

A router starts a child llama-server per loaded model, on a loopback port, with the master key in its
environment. Signalling the router alone was not enough: a router busy with a reply ignores SIGTERM
for 5 s, is killed, and the child that was generating lived on with parent 1, listening with the key
(found 15 and 18 minutes after `serve` stopped). So llama-server is started as the leader of a new
process group (its children inherit it), and whoever stops it signals the group:

- the gate, on a normal stop: SIGTERM to the group, SIGKILL to whatever is left after the grace, and
  after an unexpected exit of the leader, before it starts another;
- the supervisor, when the gate itself died (SIGKILL, a crash) and could not: the gate records the
  group in the runtime dir (`LLAMA_GROUP_FILE`), and the supervisor kills its members before it starts
  a new gate, and again when `serve` stops. Only members running the recorded binary are killed, so a
  group id reused by an unrelated process after every member died is left alone.

`serve` itself killed with SIGKILL: the gate gets SIGTERM from its parent-death signal and stops the
group as on a normal stop, so that is no worse than the gate's own death.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path

from llama_direct.runtime import LLAMA_GROUP_FILE

log = logging.getLogger(__name__)


def lead_new_group() -> None:
    """In the child between fork and exec: become the leader of a process group of its own."""
    os.setpgid(0, 0)


def members(pgid: int, binary: str | None = None) -> list[int]:
    """The live processes of group `pgid` (only those whose executable is `binary`, when given)."""
    found = []
    real = os.path.realpath(binary) if binary else None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            if real is not None and os.path.realpath(os.readlink(Path(entry.path, "exe"))) != real:
                continue
        except (OSError, ValueError, IndexError):
            continue
        found.append(int(entry.name))
    return found


def signal_group(pgid: int, signum: int) -> None:
    """Signal every process of the group; a group that is gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def record(runtime: Path, pgid: int, binary: str) -> None:
    """Leave the group where the supervisor finds it if the gate dies without stopping it."""
    path = runtime / LLAMA_GROUP_FILE
    path.write_text(json.dumps({"pgid": pgid, "binary": binary}))
    path.chmod(0o600)


def forget(runtime: Path) -> None:
    (runtime / LLAMA_GROUP_FILE).unlink(missing_ok=True)


def kill_recorded(runtime: Path) -> int:
    """SIGKILL what is left of a recorded group (the gate died and could not stop it); how many."""
    try:
        recorded = json.loads((runtime / LLAMA_GROUP_FILE).read_text())
        pgid, binary = int(recorded["pgid"]), str(recorded["binary"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    left = members(pgid, binary)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if left:
        log.info("killed %d llama-server process(es) left by the gate", len(left))
    forget(runtime)
    return len(left)
