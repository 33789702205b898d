"""The gate process's loop thread: it reports started only once its listeners are up, and a loop
that dies takes the process down with it instead of leaving llama-server running behind no listener."""

from __future__ import annotations

import threading
from pathlib import Path

from llama_launcher.gate.config import GateConfig
from llama_launcher.gate_loop import GateLoop


def _config(tmp_path: Path, private_socket: Path) -> GateConfig:
    return GateConfig(
        audience="gate-test", issuer="broker-test", broker_socket=str(tmp_path / "broker.sock"),
        control_socket=str(tmp_path / "control.sock"), private_socket=str(private_socket), model="m",
    )


def test_a_gate_that_cannot_bind_reports_failure_and_wakes_the_main_thread(tmp_path: Path) -> None:
    on_exit = threading.Event()
    loop = GateLoop(_config(tmp_path, tmp_path / "missing-dir" / "gate.sock"), object(), None, None, on_exit)
    loop.start()
    assert loop.failed
    assert on_exit.wait(5)
    loop.stop()


def test_a_gate_that_binds_serves_until_stopped(tmp_path: Path) -> None:
    on_exit = threading.Event()
    private = tmp_path / "gate.sock"
    loop = GateLoop(_config(tmp_path, private), object(), None, None, on_exit)
    loop.start()
    assert not loop.failed
    assert private.is_socket()
    assert not on_exit.is_set()
    loop.stop()
    assert not loop.thread.is_alive()
    assert on_exit.is_set()
