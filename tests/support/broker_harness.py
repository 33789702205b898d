"""The broker app under test: its settings in a tmp dir, a fake gate behind its private socket, a clock
it reads, and the fixtures that make one (`make`, `h`) with a page to serve (`_lane_on`, autouse where
imported). Shared by the broker app's test files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from health_answers import ready_health
from refusal_bodies import reason_for

import broker.static as broker_static
from broker.app import create_app
from broker.core import BrokerCore
from broker.settings import (
    BrokerSettings,
)

ACCESS_TOKEN = "test-access-token-0123456789"
HOST = "box.lan:8000"
ORIGIN = "http://box.lan:8000"
BEARER = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
READY = ready_health()
SSE = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'


def _error(message: str, status: int, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status, "reason": reason_for(status, message)}}


class Clock:
    def __init__(self, now: float = 1_750_000_000.5) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ChunkStream(httpx.AsyncByteStream):
    """A body that arrives in pieces, as a socket's would (httpx reads a bytes body eagerly)."""

    def __init__(self, body: bytes, size: int = 7) -> None:
        self.chunks = [body[i : i + size] for i in range(0, len(body), size)]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


@dataclass
class FakeGate:
    """The gate's private socket, as an httpx transport: `/health` and the baseline route."""

    health: Any = field(default_factory=lambda: dict(READY))
    reachable: bool = True
    chat_status: int = 200
    chat_body: bytes = SSE
    chat_type: str = "text/event-stream"
    requests: list[httpx.Request] = field(default_factory=list)
    predates_gate: int = 0
    """Baseline chats answered 401 `token_predates_gate` first (the gate restarted after the broker looked)."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.reachable:
            raise httpx.ConnectError("[Errno 2] No such file or directory: '/tmp/ld-secret/gate.sock'")
        self.requests.append(request)
        if request.url.path == "/health":
            return httpx.Response(200, json=self.health)
        if (request.method, request.url.path) == ("POST", "/direct/v1/chat/completions") and self.predates_gate:
            self.predates_gate -= 1
            return httpx.Response(401, json={"error": {"message": "restarted", "code": 401,
                                                       "reason": "token_predates_gate"}})
        if (request.method, request.url.path) == ("POST", "/direct/v1/chat/completions"):
            return httpx.Response(
                self.chat_status, stream=ChunkStream(self.chat_body), headers={"content-type": self.chat_type}
            )
        return httpx.Response(404)

    def chats(self) -> list[httpx.Request]:
        """The baseline chats relayed, oldest first: the broker's health polls interleave with them."""
        return [r for r in self.requests if (r.method, r.url.path) == ("POST", "/direct/v1/chat/completions")]

    def last_chat(self) -> httpx.Request:
        return self.chats()[-1]


def _settings(tmp_path: Path, **overrides: Any) -> BrokerSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "broker_socket": tmp_path / "broker.sock",
        "control_socket": tmp_path / "control.sock",
        "gate_socket": tmp_path / "gate.sock",
        "model": "smol",
        "max_tokens_cap": 512,
        "rate_per_minute": 600,
        "burst": 50,
    }
    values.update(overrides)
    return BrokerSettings(**values)


@pytest.fixture(autouse=True)
def _lane_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("UNSLOTH_DIRECT_STREAM", raising=False)
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>chat</title>")
    (static / "app.js").write_text("console.log('page')")
    (static / "assets").mkdir()
    (static / "assets" / "app.css").write_text("body{}")
    monkeypatch.setattr(broker_static, "_static_root", lambda: static)


@dataclass
class Harness:
    client: TestClient
    core: BrokerCore
    gate: FakeGate
    clock: Clock

    def login(self) -> None:
        answer = self.client.get("/?token=" + ACCESS_TOKEN, headers={"Host": HOST}, follow_redirects=False)
        assert answer.status_code == 303


HarnessFactory = Callable[..., Harness]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[HarnessFactory]:
    clients: list[TestClient] = []

    def factory(gate: FakeGate | None = None, **overrides: Any) -> Harness:
        gate = gate or FakeGate()
        clock = Clock()
        settings = _settings(tmp_path, **overrides)
        app = create_app(settings, ACCESS_TOKEN, clock=clock, gate_transport=httpx.MockTransport(gate.handle))
        client = TestClient(app, base_url=f"http://{HOST}")
        client.__enter__()
        clients.append(client)
        return Harness(client=client, core=app.state.core, gate=gate, clock=clock)

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def h(make: HarnessFactory) -> Harness:
    return make()


def _negotiated(h: Harness, **body: Any) -> httpx.Response:
    return h.client.post("/direct-stream", headers=BEARER, json=body)
