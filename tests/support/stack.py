"""A whole `llama-direct serve` stack (parent, broker, gate, real llama-server) for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llama_direct.runtime import LOGS_DIR, parse_ready_line, parse_runtime_line, read_serve_log
from llama_launcher.bench.processes import descendants, kill_all, stop_process


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    login_url: str
    runtime: Path
    log_path: Path
    data_dir: Path
    port: int
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        parts = urllib.parse.urlsplit(self.login_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def access_token(self) -> str:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.login_url).query)["token"][0]

    def log_text(self) -> str:
        """What serve wrote on the terminal, then every process's log file (serve, gate, broker)."""
        texts = [self.log_path.read_text(errors="replace")]
        texts += [path.read_text(errors="replace") for path in sorted((self.data_dir / LOGS_DIR).glob("*.log"))]
        return "\n".join(texts)

    def negotiate(self, origin: str | None = None, **body: object) -> dict:
        headers = {"Authorization": f"Bearer {self.access_token}"}
        if origin:
            headers["Origin"] = origin
        response = httpx.post(f"{self.base}/direct-stream", headers=headers, json=body or None, timeout=10,
                              verify=False)
        assert response.status_code == 200, response.text
        return response.json()

    def gate_health(self) -> dict:
        transport = httpx.HTTPTransport(uds=str(self.runtime / "gate.sock"))
        with httpx.Client(transport=transport, timeout=5) as client:
            return client.get("http://gate/health").json()

    def busy_slots(self) -> int:
        return int(self.gate_health()["slots"]["busy"])


@contextlib.contextmanager
def run_stack(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
              command: Sequence[str] = (sys.executable, "-m", "llama_launcher.cli"),
              cwd: Path | None = None) -> Iterator[Stack]:
    """`command serve` on a free port with a data dir of its own; `command` is this checkout's CLI unless
    a test runs another install of it (the wheel's), from `cwd`."""
    data_dir = Path(tempfile.mkdtemp(prefix="ld-test-data-"))
    log_file = tempfile.NamedTemporaryFile("wb", prefix="ld-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [*command, "serve", "--port", "0", "--data-dir", str(data_dir), *args],
        stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True,
        cwd=cwd,
    )
    log_path = Path(log_file.name)
    log_file.close()
    deadline = time.monotonic() + timeout
    login = runtime = None
    port = 0
    while time.monotonic() < deadline and process.poll() is None:
        text = log_path.read_text(errors="replace")
        ready, where = parse_ready_line(text), parse_runtime_line(text + read_serve_log(data_dir))
        if ready and where:
            login, runtime, port = ready, where.path, where.port
            break
        time.sleep(0.1)
    family = descendants(process.pid)
    try:
        if login is None or runtime is None:
            raise AssertionError(f"serve did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield Stack(process, login, runtime, log_path, data_dir, port)
    finally:
        family = sorted(set(family) | set(descendants(process.pid)))
        stop_process(process, 30, group=True)
        kill_all(family)
