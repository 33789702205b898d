"""The owner's unload of a router's model (issue 29): the broker's route judges who and which model, the
gate asks the routers; a named user, a foreign page, a single-model server and an unknown name are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from health_answers import ready_health

from broker.access import Caller
from broker.app import create_app
from broker.gate_health import GateHealth
from broker.settings import BrokerSettings
from broker.unload import may_unload
from llama_direct.control import GATE_UNLOAD_PATH, parse_unload_request, unload_request
from llama_direct.lanes import MODEL_UNLOAD_PATH
from llama_direct.tokens import OWNER
from llama_launcher.gate import unload as gate_unload

TOKEN = "test-access-token-0123456789"
HOST = "box.lan:8000"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ROUTER = ready_health("alpha", router=True, slots={"total": None, "busy": None}, models=[
    {"id": "alpha", "status": "loaded", "vision": False}, {"id": "beta", "status": "unloaded", "vision": False}])


@dataclass
class Gate:
    """The gate's private socket: `/health`, and the unload answered with `status`."""

    health: Any = field(default_factory=lambda: dict(ROUTER))
    status: int = 204
    unloads: list[Any] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json=self.health)
        if (request.method, request.url.path) == ("POST", GATE_UNLOAD_PATH):
            self.unloads.append(json.loads(request.content))
            return httpx.Response(self.status)
        return httpx.Response(404)


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def client(tmp_path: Path, gate: Gate) -> Iterator[TestClient]:
    settings = BrokerSettings(data_dir=tmp_path / "data", broker_socket=tmp_path / "b.sock",
                              control_socket=tmp_path / "c.sock", gate_socket=tmp_path / "g.sock", model="alpha",
                              max_tokens_cap=512, rate_per_minute=600, burst=50)
    app = create_app(settings, TOKEN, gate_transport=httpx.MockTransport(gate.handle))
    with TestClient(app, base_url=f"http://{HOST}") as test_client:
        yield test_client


def _reason(answer: httpx.Response) -> str:
    return str(answer.json()["error"]["reason"])


def test_the_owner_unloads_a_routers_model_through_the_gate(client: TestClient, gate: Gate) -> None:
    assert client.get("/v1/models", headers=BEARER).json()["can_unload"] is True
    answer = client.post(MODEL_UNLOAD_PATH, json={"model": "alpha"}, headers=BEARER)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model": "alpha", "status": "unloaded"}
    assert gate.unloads == [{"model": "alpha"}]


def test_the_owners_session_unloads_from_the_page_but_not_from_another_site(client: TestClient, gate: Gate) -> None:
    assert client.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303
    foreign = client.post(MODEL_UNLOAD_PATH, json={"model": "alpha"}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and _reason(foreign) == "origin_not_allowed"
    cross = client.post(MODEL_UNLOAD_PATH, json={"model": "alpha"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403 and _reason(cross) == "origin_not_allowed"
    assert gate.unloads == []
    own = client.post(MODEL_UNLOAD_PATH, json={"model": "alpha"}, headers={"Origin": f"http://{HOST}"})
    assert own.status_code == 200 and gate.unloads == [{"model": "alpha"}]


def test_nobody_logged_in_is_401(client: TestClient, gate: Gate) -> None:
    assert client.post(MODEL_UNLOAD_PATH, json={"model": "alpha"}).status_code == 401
    assert gate.unloads == []


@pytest.mark.parametrize("body", [b"{}", b'{"model": 7}', b'{"model": ""}', b'{"model": "a", "x": 1}', b"[", b"null"])
def test_a_body_that_is_not_one_model_name_is_400(client: TestClient, gate: Gate, body: bytes) -> None:
    answer = client.post(MODEL_UNLOAD_PATH, content=body, headers=BEARER)
    assert answer.status_code == 400 and _reason(answer) == "bad_unload"
    assert gate.unloads == []


def test_an_unknown_model_is_400_naming_it_only_when_safe(client: TestClient, gate: Gate) -> None:
    answer = client.post(MODEL_UNLOAD_PATH, json={"model": "gamma"}, headers=BEARER)
    assert answer.status_code == 400 and _reason(answer) == "unknown_model"
    assert answer.json()["error"]["param"] == "gamma"
    path = client.post(MODEL_UNLOAD_PATH, json={"model": "/models/x.gguf"}, headers=BEARER)
    assert path.status_code == 400 and "param" not in path.json()["error"]
    assert gate.unloads == []


def test_a_single_model_server_has_nothing_to_unload(client: TestClient, gate: Gate) -> None:
    gate.health = ready_health("alpha")
    client.app.state.core.gate.health = GateHealth.read(json.dumps(gate.health).encode())  # type: ignore[attr-defined]
    assert "can_unload" not in client.get("/v1/models", headers=BEARER).json()
    answer = client.post(MODEL_UNLOAD_PATH, json={"model": "alpha"}, headers=BEARER)
    assert answer.status_code == 409 and _reason(answer) == "not_a_router"
    assert gate.unloads == []


@pytest.mark.parametrize(("status", "expected", "reason"), [
    (404, 400, "unknown_model"), (409, 409, "not_a_router"), (502, 502, "upstream_unavailable"),
])
def test_the_gates_refusal_becomes_the_brokers(client: TestClient, gate: Gate, status: int, expected: int,
                                               reason: str) -> None:
    gate.status = status
    answer = client.post(MODEL_UNLOAD_PATH, json={"model": "alpha"}, headers=BEARER)
    assert answer.status_code == expected and _reason(answer) == reason


def test_only_the_owner_may_unload() -> None:
    assert may_unload(Caller(user=OWNER, ambient=False))
    assert may_unload(Caller(user=OWNER, session_id="s"))
    assert not may_unload(Caller(user="u_ann", name="ann"))
    assert not may_unload(Caller(user=OWNER, name="local"))  # a named user is never the owner, whatever its id
    assert not may_unload(Caller(user="someone"))


def test_the_unload_document_is_one_name() -> None:
    assert parse_unload_request(unload_request("alpha")) == "alpha"
    for bad in ({}, {"model": 1}, {"model": ""}, {"model": "a" * 513}, {"model": "a", "b": 1}, ["alpha"], None):
        assert parse_unload_request(bad) is None


@dataclass
class Health:
    """What the gate's unload asks of a member's health: whether it is a router, and a model's state."""

    router: bool
    models: dict[str, str]
    asked: int = 0

    async def model_status(self, model: str) -> str | None:
        self.asked += 1
        return self.models.get(model) if self.router else None


def _member(router: bool, **models: str) -> Any:
    return SimpleNamespace(upstream=object(), health=Health(router, models))


def _gate_unload(monkeypatch: pytest.MonkeyPatch, members: list[Any], body: bytes,
                 answer: int = 200) -> tuple[int, list[Any]]:
    sent: list[Any] = []

    async def send_request(upstream: object, method: str, path: str, *, timeout: float, body: bytes) -> int:
        document = json.loads(body)
        sent.append((method, path, document))
        member = next(m for m in members if m.upstream is upstream)
        if answer == 200:
            member.health.models[document["model"]] = "unloaded"  # type: ignore[index]
        return answer

    monkeypatch.setattr(gate_unload, "send_request", send_request)
    return asyncio.run(gate_unload.unload(members, body)), sent


def test_the_gate_asks_each_router_that_lists_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    members = [_member(True, alpha="loaded"), _member(True, beta="loaded"), _member(True, alpha="loaded")]
    status, sent = _gate_unload(monkeypatch, members, b'{"model": "alpha"}')
    assert status == 204
    assert sent == [("POST", "/models/unload", {"model": "alpha"})] * 2


def test_the_gate_refuses_what_it_cannot_unload(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _gate_unload(monkeypatch, [_member(False)], b'{"model": "alpha"}') == (409, [])
    assert _gate_unload(monkeypatch, [_member(True, beta="loaded")], b'{"model": "alpha"}') == (404, [])
    assert _gate_unload(monkeypatch, [_member(True, alpha="loaded")], b'{"model": 1}') == (400, [])
    failed, _ = _gate_unload(monkeypatch, [_member(True, alpha="loaded")], b'{"model": "alpha"}', answer=500)
    assert failed == 502


def test_a_model_already_unloaded_counts_as_unloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    status, _ = _gate_unload(monkeypatch, [_member(True, alpha="unloaded")], b'{"model": "alpha"}', answer=400)
    assert status == 204  # llama-server: 400 "model is not running"; asked again, it is unloaded
