"""Waiting for a child's exit does not poll (issue 24: the gate's supervisor woke 80 times a second).

Each test proves it by counting, never by timing: how often the waiter asked the child whether it
had exited (`poll`), and how often the waiting thread woke (`voluntary_ctxt_switches`, the kernel's
count of the times it went to sleep). A blocking wait sleeps once and is not woken until something
happens, however long the window and however loaded the machine; a poller, even one starved by a
busy machine, wakes many times in a second (`Popen.wait(0.1)` sleeps at most 50 ms at a time).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llama_launcher import child_wait, server_process, supervisor
from llama_launcher.child_wait import StopEvent, wait_for_exit

WINDOW_S = 1.0
"""How long each waiter is watched while nothing happens: time for a poller to wake 20 times."""
MAX_WAKEUPS = 2
"""A blocking waiter may still be between its first check and its `select` when the window opens."""


class CountingPopen(subprocess.Popen[bytes]):
    """A child that counts how often anyone asked whether it had exited."""

    polls = 0

    def poll(self) -> int | None:
        self.polls += 1
        return super().poll()


def _sleeper() -> CountingPopen:
    return CountingPopen([sys.executable, "-c", "import time; time.sleep(300)"], stdin=subprocess.DEVNULL)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
            child.wait()


def _wakeups(native_id: int) -> int:
    for line in Path(f"/proc/self/task/{native_id}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


class Waiter:
    """Runs `target` on a thread and counts that thread's wakeups over a quiet window."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self.result: list[Any] = []
        self._native = threading.Event()
        self.native_id = 0
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()
        assert self._native.wait(30)

    def _run(self, target: Callable[[], Any]) -> None:
        self.native_id = threading.get_native_id()
        self._native.set()
        self.result.append(target())

    def wakeups_over_quiet_window(self) -> int:
        time.sleep(0.2)  # let it reach its wait; not a bound: a late start only adds a wakeup or two
        before = _wakeups(self.native_id)
        time.sleep(WINDOW_S)
        return _wakeups(self.native_id) - before

    def join(self) -> Any:
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.result[0]


def test_a_poller_is_seen_waking_which_is_what_the_other_tests_rule_out(children: list) -> None:
    """The measure works: `Popen.wait(0.1)` in a loop, as the gate's supervisor did, wakes many times."""
    child = _sleeper()
    children.append(child)
    stop = threading.Event()

    def poll_as_before() -> None:
        while not stop.is_set():
            try:
                child.wait(timeout=0.1)
                return
            except subprocess.TimeoutExpired:
                continue

    waiter = Waiter(poll_as_before)
    woken = waiter.wakeups_over_quiet_window()
    stop.set()
    waiter.join()
    assert woken > 5 * MAX_WAKEUPS


def test_waiting_for_a_child_does_not_poll_and_returns_when_it_exits(children: list) -> None:
    child = _sleeper()
    children.append(child)
    stop = StopEvent()
    waiter = Waiter(lambda: wait_for_exit([child], stop))
    assert waiter.wakeups_over_quiet_window() <= MAX_WAKEUPS
    assert child.polls == 1  # the check before the select, and nothing since
    child.kill()
    assert waiter.join() is child
    assert child.returncode == -signal.SIGKILL


def test_waiting_on_two_children_returns_the_one_that_exited(children: list) -> None:
    first, second = _sleeper(), _sleeper()
    children.extend([first, second])
    stop = StopEvent()
    waiter = Waiter(lambda: wait_for_exit([first, second], stop))
    assert waiter.wakeups_over_quiet_window() <= MAX_WAKEUPS
    second.terminate()
    assert waiter.join() is second
    assert first.poll() is None


def test_a_stop_from_another_thread_ends_the_wait(children: list) -> None:
    child = _sleeper()
    children.append(child)
    stop = StopEvent()
    waiter = Waiter(lambda: wait_for_exit([child], stop))
    assert waiter.wakeups_over_quiet_window() <= MAX_WAKEUPS
    stop.set()
    assert waiter.join() is None
    assert child.poll() is None


def test_a_stop_set_by_a_signal_handler_ends_a_wait_on_the_main_thread(children: list) -> None:
    """The gate's and serve's path: SIGTERM's handler sets the stop while the main thread selects.

    Sent to the process, as `kill` does: Linux hands a process-directed signal to the main thread
    when it does not block it, so its `select` is interrupted and Python runs the handler there.
    """
    child = _sleeper()
    children.append(child)
    stop = StopEvent()
    previous = signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        assert wait_for_exit([child], stop) is None
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert stop.is_set() and child.poll() is None


def test_a_stop_already_set_or_a_child_already_gone_returns_at_once(children: list) -> None:
    child = _sleeper()
    children.append(child)
    stop = StopEvent()
    stop.set()
    assert wait_for_exit([child], stop) is None
    stop.clear()
    assert wait_for_exit([child], stop, timeout=0.01) is None  # the pipe was drained with the flag
    child.kill()
    child.wait()
    assert wait_for_exit([child], stop) is child


def test_without_pidfds_the_wait_falls_back_to_a_slow_poll(children: list, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(_pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(child_wait.os, "pidfd_open", refused)
    child = _sleeper()
    children.append(child)
    stop = StopEvent()
    waiter = Waiter(lambda: wait_for_exit([child], stop))
    assert waiter.wakeups_over_quiet_window() <= MAX_WAKEUPS + WINDOW_S / child_wait.FALLBACK_POLL_SECONDS
    child.kill()
    assert waiter.join() is child


def test_the_gates_llama_server_supervisor_sleeps_until_llama_server_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LlamaServer.supervise`, the loop the gate's main thread runs while it serves, over a stand-in."""
    script = tmp_path / "llama-server"
    script.write_text("#!/bin/sh\nexec sleep 300\n")
    script.chmod(0o755)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    options = server_process.ServerOptions(binary=script, model=tmp_path / "m.gguf", alias="m")
    server = server_process.LlamaServer(options, tmp_path)
    waits: list[int] = []
    real_wait = server_process.wait_for_exit

    def counted(found: list, stop: threading.Event) -> object:
        waits.append(1)
        return real_wait(found, stop)

    monkeypatch.setattr(server_process, "wait_for_exit", counted)
    stop = StopEvent()
    server.start()
    try:
        waiter = Waiter(lambda: server.supervise(stop))
        assert waiter.wakeups_over_quiet_window() <= MAX_WAKEUPS
        assert len(waits) == 1
        stop.set()
        waiter.join()
    finally:
        server.stop()
    assert len(waits) == 1  # the stop ended the wait; no respawn


def test_serves_supervisor_sleeps_until_a_child_exits_then_restarts_it(
    children: list, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`Stack.supervise`, serve's main loop over its broker and gate, with sleepers for both."""
    stack = supervisor.Stack.__new__(supervisor.Stack)
    stack.stopping = StopEvent()
    stack.runtime = tmp_path
    stack.broker, stack.gate = _sleeper(), _sleeper()
    children.extend([stack.broker, stack.gate])
    restarted = threading.Event()

    def start_gate() -> None:
        stack.gate = _sleeper()
        children.append(stack.gate)
        restarted.set()

    monkeypatch.setattr(stack, "start_gate", start_gate)
    waiter = Waiter(stack.supervise)
    assert waiter.wakeups_over_quiet_window() <= MAX_WAKEUPS
    first_gate = stack.gate
    first_gate.kill()
    assert restarted.wait(30)  # after the back-off of half a second
    assert stack.gate is not first_gate
    assert waiter.wakeups_over_quiet_window() <= MAX_WAKEUPS
    stack.stopping.set()
    assert waiter.join() is None
