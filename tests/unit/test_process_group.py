"""llama-server and what it starts are stopped as one process group (issue 25, finding 6).

Stand-ins for a router: a shell script that starts a child which ignores SIGTERM (a child busy with a
reply outlived its router) and then ignores SIGTERM itself while the child runs, as a router mid-reply
did for 5 s before it was killed, leaving the child alive with parent 1.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_launcher import process_group
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

ROUTER = """#!/bin/sh
trap '' TERM
sh -c "trap '' TERM; echo \\$\\$ > {child}; while :; do sleep 1; done" &
while :; do sleep 1; done
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(path: Path) -> int:
    for _ in range(1000):
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def _gone(pid: int) -> bool:
    for _ in range(1000):
        if not _alive(pid):
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[ServerOptions, Path]]:
    child = tmp_path / "child.pid"
    script = tmp_path / "llama-server"
    script.write_text(ROUTER.format(child=child))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    yield ServerOptions(binary=script, model=model, alias="m"), child
    if child.exists() and child.read_text().strip():
        pid = int(child.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_stop_ends_a_router_that_ignores_sigterm_and_the_child_it_started(
        router: tuple[ServerOptions, Path], tmp_path: Path) -> None:
    options, child_file = router
    server = LlamaServer(options, tmp_path)
    server.start()
    leader = server.pid
    assert leader is not None
    child = _wait_for(child_file)
    assert child in process_group.members(leader), "the child is in the router's group"
    assert (tmp_path / "llama-server-group.json").exists()
    server.stop(grace=0.2)
    assert not _alive(leader)
    assert _gone(child), "the router's child outlived it"
    assert not (tmp_path / "llama-server-group.json").exists()


def test_the_supervisor_kills_what_a_dead_gate_left(router: tuple[ServerOptions, Path], tmp_path: Path) -> None:
    """The gate died by SIGKILL: its llama-server group is left; the recorded group is killed whole."""
    options, child_file = router
    leader = subprocess.Popen([str(options.binary)], process_group=0)
    try:
        child = _wait_for(child_file)
        # The stand-in is a shell script, so the executable its processes run is the shell (a real
        # router's children run the llama-server binary it runs itself).
        process_group.record(tmp_path, leader.pid, "/bin/sh")
        assert process_group.kill_recorded(tmp_path) >= 2  # the script and its child; a `sleep` runs out
    finally:
        leader.kill()
        leader.wait()
    assert _gone(child)


def test_only_members_running_the_recorded_binary_are_killed(tmp_path: Path) -> None:
    """A group id reused by an unrelated process, after every member died, is left alone."""
    other = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        process_group.record(tmp_path, other.pid, str(tmp_path / "llama-server"))
        assert process_group.kill_recorded(tmp_path) == 0
        assert _alive(other.pid)
        assert not (tmp_path / "llama-server-group.json").exists()
    finally:
        other.kill()
        other.wait()
