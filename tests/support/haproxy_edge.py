"""HAProxy as `llama-direct haproxy-config` writes it (real tests): at the edge of `serve` stacks, or
in the gate's place in front of llama-servers."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from broker.signing_keys import SigningKey


@contextmanager
def haproxy_edge(workdir: Path, gates: list[str]) -> Iterator[str]:
    """HAProxy in front of `gates` (each a `--gate` value); yields its base URL."""
    haproxy = haproxy_binary()
    port = free_port()
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


def haproxy_binary() -> str:
    """HAProxy's binary; the test is skipped where it is not installed."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return haproxy


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def public_key_file(key: SigningKey, workdir: Path) -> Path:
    """The broker's public key as the PEM file `haproxy-config --public-key-file` takes."""
    path = workdir / "broker-public.pem"
    path.write_bytes(key.public_key.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@contextmanager
def haproxy_in_gates_place(workdir: Path, port: int, llama_key: str, *config_args: str) -> Iterator[None]:
    """HAProxy listening on `port`, configured by `haproxy-config` with `config_args` (its upstreams,
    the public key, the names tokens carry); llama-server's key reaches it in its environment only,
    never in the file. Stopped on exit."""
    haproxy = haproxy_binary()
    config = workdir / "haproxy.cfg"
    subprocess.run([sys.executable, "-m", "llama_launcher.cli", "haproxy-config", "--bind", f"127.0.0.1:{port}",
                    *config_args, "--output", str(config)], check=True)
    assert llama_key not in config.read_text()
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)], env={"LLAMA_API_KEY": llama_key},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(process, port)
        yield
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def exchange(port: int, raw: bytes, timeout: float = 120) -> int:
    """`raw` sent to HAProxy on a fresh connection, read to its end (each request says Connection:
    close); HAProxy's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    status = re.match(rb"HTTP/1\.[01] (\d{3}) ", bytes(data))
    assert status is not None, data[:200]
    return int(status.group(1))


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
