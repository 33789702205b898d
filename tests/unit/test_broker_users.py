"""Named users at the broker: their login token and API key, their sessions, their models and cap,
and what `users remove`/`rotate` end, with the owner's access token unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from redis_server import RedisServer
from refusal_bodies import reason_for

from broker.accounts import user_for_secret
from broker.app import create_app, create_control_app
from broker.core import BrokerCore
from broker.gate_health import GateHealth
from broker.settings import BrokerSettings
from llama_direct.control import STATE_PATH, USERS_CHANGED_PATH
from llama_direct.lanes import WHOAMI_PATH
from llama_direct.user_store import open_store
from llama_direct.users import Limits, NewSecrets, User, new_secrets, new_user

ACCESS_TOKEN = "test-access-token-0123456789"
HOST = "box.lan:8000"
HEALTH: dict[str, Any] = {
    "gate": "ok", "model_ready": True, "model": "smol", "vision": False, "slots": {"total": None, "busy": None},
    "router": True, "models": [{"id": "smol", "status": "loaded", "vision": False},
                               {"id": "big", "status": "unloaded", "vision": False}],
}
SSE = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'


class Gate:
    """The gate's private socket: its health, and the baseline's chats recorded."""

    def __init__(self) -> None:
        self.chats: list[httpx.Request] = []
        self.health: dict[str, Any] = dict(HEALTH)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json=self.health)
        self.chats.append(request)
        return httpx.Response(200, content=SSE, headers={"content-type": "text/event-stream"})


@dataclass
class Box:
    client: TestClient
    core: BrokerCore
    gate: Gate
    data_dir: Path

    def add(self, name: str, **limits: Any) -> tuple[User, NewSecrets]:
        user, made = new_user(name, Limits(**limits), time.time()), new_secrets()
        self.core.users.add(user, made.records())
        return user, made

    def negotiate(self, bearer: str | None = None, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {"Sec-Fetch-Site": "same-origin"}
        return self.client.post("/direct-stream", json=body, headers=headers)


def _claims(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    claims: dict[str, Any] = jwt.decode(answer.json()["token"], options={"verify_signature": False})
    return claims


def _reason(answer: httpx.Response) -> str:
    error = answer.json()["error"]
    assert error["reason"] == reason_for(answer.status_code, error["message"])
    return str(error["reason"])


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Box]:
    monkeypatch.delenv("UNSLOTH_DIRECT_STREAM", raising=False)
    settings = BrokerSettings(data_dir=tmp_path / "data", broker_socket=tmp_path / "b.sock",
                              control_socket=tmp_path / "c.sock", gate_socket=tmp_path / "g.sock", model="smol",
                              models=("smol", "big"), max_tokens_cap=512, rate_per_minute=600, burst=50)
    gate = Gate()
    app = create_app(settings, ACCESS_TOKEN, gate_transport=httpx.MockTransport(gate.handle))
    with TestClient(app, base_url=f"http://{HOST}") as client:
        yield Box(client, app.state.core, gate, settings.data_dir)


def test_the_owner_is_unchanged(box: Box) -> None:
    assert _claims(box.negotiate(ACCESS_TOKEN))["sub"] == "local"
    assert box.client.get(WHOAMI_PATH, headers={"Authorization": f"Bearer {ACCESS_TOKEN}"}).json() == {
        "sub": "local", "name": None, "owner": True}
    assert box.client.get("/?token=" + ACCESS_TOKEN, follow_redirects=False).status_code == 303
    assert box.client.get(WHOAMI_PATH).json()["owner"] is True
    assert [m["id"] for m in box.client.get("/v1/models").json()["data"]] == ["smol", "big"]


def test_a_login_link_logs_a_browser_in_as_the_user(box: Box) -> None:
    user, made = box.add("Ann")
    answer = box.client.get("/?token=" + made.login_token, follow_redirects=False)
    assert answer.status_code == 303 and made.login_token not in answer.headers["set-cookie"]
    assert box.client.get("/").status_code == 200
    assert box.client.get(WHOAMI_PATH).json() == {"sub": user.id, "name": "ann", "owner": False}
    claims = _claims(box.negotiate())
    assert claims["sub"] == user.id != "ann"


def test_an_api_key_is_a_bearer_but_never_a_login(box: Box) -> None:
    user, made = box.add("ann")
    assert _claims(box.negotiate(made.api_key))["sub"] == user.id
    assert _claims(box.negotiate(made.login_token))["sub"] == user.id  # the login token is a bearer too
    listed = box.client.get("/v1/models", headers={"Authorization": f"Bearer {made.api_key}"})
    assert listed.status_code == 200
    answer = box.client.get("/?token=" + made.api_key, follow_redirects=False)
    assert answer.status_code == 401 and _reason(answer) == "bad_access_token"


@pytest.mark.parametrize("presented", ["ldk_" + "A" * 43, "ldt_" + "A" * 43, "wrong"])
def test_an_unknown_secret_is_refused(box: Box, presented: str) -> None:
    box.add("ann")
    answer = box.negotiate(presented)
    assert answer.status_code == 401 and _reason(answer) == "bad_access_token"


def test_the_baseline_serves_a_user_as_the_user(box: Box) -> None:
    user, made = box.add("ann", models=("big",), max_tokens=32)
    answer = box.client.post("/v1/chat/completions", json={"messages": []},
                             headers={"Authorization": f"Bearer {made.api_key}"})
    assert answer.status_code == 200
    minted = box.gate.chats[-1].headers["authorization"].removeprefix("Bearer ")
    claims = jwt.decode(minted, options={"verify_signature": False})
    assert (claims["sub"], claims["grant"]["model"], claims["grant"]["max_tokens"]) == (user.id, "big", 32)
    refused = box.client.post("/v1/chat/completions", json={"model": "smol", "messages": []},
                              headers={"Authorization": f"Bearer {made.api_key}"})
    assert refused.status_code == 400 and _reason(refused) == "unknown_model"


def test_models_and_max_tokens_are_limited(box: Box) -> None:
    _, made = box.add("ann", models=("big",), max_tokens=100)
    claims = _claims(box.negotiate(made.api_key))
    assert (claims["grant"]["model"], claims["grant"]["max_tokens"]) == ("big", 100)
    assert _claims(box.negotiate(made.api_key, max_tokens=10))["grant"]["max_tokens"] == 10
    refused = box.negotiate(made.api_key, model="smol")
    assert refused.status_code == 400 and _reason(refused) == "unknown_model"
    listed = box.client.get("/v1/models", headers={"Authorization": f"Bearer {made.api_key}"}).json()
    assert [m["id"] for m in listed["data"]] == ["big"]
    _, other = box.add("bob", models=("not-served",))
    refused = box.negotiate(other.api_key)
    assert refused.status_code == 400 and _reason(refused) == "unknown_model"


def test_a_users_stream_limit_rides_in_every_grant_and_the_broker_holds_them_to_it(box: Box) -> None:
    _, made = box.add("ann", streams=2)
    assert _claims(box.negotiate(made.api_key))["grant"]["streams"] == 2
    box.client.post("/v1/chat/completions", json={"messages": []}, headers={"Authorization": f"Bearer {made.api_key}"})
    minted = box.gate.chats[-1].headers["authorization"].removeprefix("Bearer ")
    assert jwt.decode(minted, options={"verify_signature": False})["grant"]["streams"] == 2
    refused = box.negotiate(made.api_key)  # two grants held, neither ended: a third is one stream too many
    assert (refused.status_code, _reason(refused), refused.headers["retry-after"]) == (429, "too_many_streams", "1")
    _, other = box.add("bob")  # no limit of their own: the gate's --streams-per-user applies
    assert "streams" not in _claims(box.negotiate(other.api_key))["grant"]
    assert "streams" not in _claims(box.negotiate(ACCESS_TOKEN))["grant"]


def test_remove_refuses_secrets_sessions_and_held_grants(box: Box) -> None:
    user, made = box.add("ann")
    _, bob = box.add("bob")
    box.client.get("/?token=" + made.login_token)
    token = box.negotiate().json()["token"]
    store = open_store(box.data_dir)  # what `llama-direct users remove` opens, beside the broker's own
    store.remove("ann", not_before=int(time.time()) + 1)
    store.close()
    answer = box.client.get(WHOAMI_PATH)
    assert answer.status_code == 401 and _reason(answer) == "login_required"
    assert box.negotiate(made.api_key).status_code == 401
    assert box.client.get("/?token=" + made.login_token, follow_redirects=False).status_code == 401
    control = TestClient(create_control_app(box.core), base_url="http://broker")
    assert control.post(USERS_CHANGED_PATH).status_code == 204
    state = control.get(STATE_PATH).json()
    not_before = state["revocations"]["not_before"][user.id]
    assert jwt.decode(token, options={"verify_signature": False})["iat"] < not_before  # the gate refuses it
    assert _claims(box.negotiate(bob.api_key))["sub"] != user.id  # others go on


def test_a_removal_refuses_a_grant_minted_at_the_gates_later_start_second(box: Box) -> None:
    """The broker mints no `iat` before the gate's start cut-off, which can be seconds ahead of the clock
    the command read: the revocation it applies covers that `iat` too."""
    user, made = box.add("ann")
    box.gate.health["not_issued_before"] = int(time.time()) + 3
    box.core.gate.health = GateHealth.from_answer(box.gate.health)
    token = box.negotiate(made.api_key).json()["token"]
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    assert iat == box.gate.health["not_issued_before"]
    store = open_store(box.data_dir)
    store.remove("ann", not_before=int(time.time()) + 1)
    store.close()
    box.core.apply_user_revocations()
    assert box.core.revocations.to_dict()["not_before"][user.id] > iat


def test_rotate_ends_old_secrets_and_sessions_and_new_ones_work(box: Box) -> None:
    user, made = box.add("ann")
    box.client.get("/?token=" + made.login_token)
    fresh = new_secrets()
    rotated = box.core.users.rotate("ann", fresh.records(), not_before=int(time.time()) + 1)
    assert box.client.get(WHOAMI_PATH).status_code == 401
    assert box.negotiate(made.api_key).status_code == 401
    box.core.apply_user_revocations()
    claims = _claims(box.negotiate(fresh.api_key))
    assert claims["sub"] == user.id == rotated.id
    assert claims["iat"] >= box.core.revocations.to_dict()["not_before"][user.id]  # born after the revocation
    box.client.get("/?token=" + fresh.login_token)
    assert box.client.get(WHOAMI_PATH).json()["name"] == "ann"


def test_a_restarted_broker_applies_what_the_store_left(tmp_path: Path, box: Box) -> None:
    user, _ = box.add("ann")
    box.core.users.remove("ann", not_before=int(time.time()) + 1)
    again = BrokerCore(box.core.settings, ACCESS_TOKEN, gate_transport=httpx.MockTransport(Gate().handle))
    assert user.id in again.revocations.to_dict()["not_before"]


def test_in_a_fleet_every_broker_knows_the_users_in_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two brokers on one Redis: a user added at one is known at the other, and a removal there is a
    shared revocation, announced to every broker's gate."""
    brokers = [BrokerCore(BrokerSettings(data_dir=tmp_path / name, broker_socket=tmp_path / f"{name}.sock",
                                         control_socket=tmp_path / f"{name}c.sock", gate_socket=tmp_path / "g.sock",
                                         model="smol"), ACCESS_TOKEN, redis_url=redis_server.url,
                          gate_transport=httpx.MockTransport(Gate().handle)) for name in ("a", "b")]
    user, made = new_user("ann", Limits(), time.time()), new_secrets()
    brokers[0].users.add(user, made.records())
    assert user_for_secret(brokers[1].users, made.api_key, login=False) == user
    brokers[1].users.remove("ann", not_before=int(time.time()) + 1)
    assert user_for_secret(brokers[0].users, made.api_key, login=False) is None
    assert user.id in brokers[0].revocations.to_dict()["not_before"]
    assert not any((tmp_path / name / "users.sqlite3").exists() for name in ("a", "b"))
