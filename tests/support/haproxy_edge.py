"""HAProxy at the edge of `serve` stacks, as `llama-direct haproxy-config` writes it (real tests)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def haproxy_edge(workdir: Path, gates: list[str]) -> Iterator[str]:
    """HAProxy in front of `gates` (each a `--gate` value); yields its base URL."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = workdir / "edge.cfg"
    subprocess.run([sys.executable, "-m", "llama_launcher.cli", "haproxy-config", "--bind", f"127.0.0.1:{port}",
                    *[arg for gate in gates for arg in ("--gate", gate)], "--output", str(config)], check=True)
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(process, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def wait_listening(process: subprocess.Popen[bytes], port: int, timeout: float = 10.0) -> None:
    """Until HAProxy accepts on `port`; fails with its stderr (when piped) if it exits or never listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None:
                raise AssertionError("haproxy exited: " + (process.stderr.read().decode(errors="replace")
                                                           if process.stderr else "")) from None
            assert time.monotonic() < deadline, "haproxy did not listen"
            time.sleep(0.05)
