"""The broker mounted in a host's own FastAPI app, behind the host's "who" (`broker.mount.direct_router`)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from example_app import example_app
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from health_answers import ready_health

from broker.core import BrokerCore
from broker.mount import direct_router
from broker.settings import BrokerSettings
from llama_direct.lanes import LANE_ROUTES

HOST = "app.example:8080"
ORIGIN = "http://app.example:8080"
READY = ready_health()


class FakeGate:
    """The gate's private socket: `/health`, and every lane route answered with the path it was sent."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/health":
            return httpx.Response(200, json=READY)
        return httpx.Response(200, json={"served": request.url.path})


def _core(tmp_path: Path, gate: FakeGate) -> BrokerCore:
    settings = BrokerSettings(
        data_dir=tmp_path / "data", broker_socket=tmp_path / "b.sock", control_socket=tmp_path / "c.sock",
        gate_socket=tmp_path / "g.sock", model="smol", max_tokens_cap=512,
    )
    return BrokerCore(settings, "unused-access-token-0123456789", gate_transport=httpx.MockTransport(gate.handle))


def _host(tmp_path: Path, gate: FakeGate, *, lane_on: bool = True) -> FastAPI:
    """A host app with a toy auth (`X-User`) that mounts the broker beside a route of its own."""
    core = _core(tmp_path, gate)
    app = FastAPI()

    async def who(request: Request) -> str | None:
        return request.headers.get("x-user")

    @app.get("/own")
    async def own() -> dict[str, bool]:
        return {"own": True}

    app.include_router(direct_router(core, who=who, lane_url="https://lane.example/direct",
                                     enabled=lambda: lane_on))
    return app


@pytest.fixture
def gate() -> FakeGate:
    return FakeGate()


@pytest.fixture
def client(tmp_path: Path, gate: FakeGate) -> Iterator[TestClient]:
    with TestClient(_host(tmp_path, gate), base_url=f"http://{HOST}") as client:
        yield client


ALICE = {"X-User": "alice", "Origin": ORIGIN}


def test_negotiation_grants_the_hosts_user_a_token_for_the_hosts_lane(client: TestClient) -> None:
    answer = client.post("/direct-stream", json={}, headers=ALICE)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["supported"] is True
    assert body["url"] == "https://lane.example/direct"
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert claims["grant"]["origin"] == ORIGIN
    assert client.get("/own").json() == {"own": True}


def test_the_host_saying_no_one_is_login_required(client: TestClient) -> None:
    for method, path in (("POST", "/direct-stream"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        answer = client.request(method, path, headers={"Origin": ORIGIN})
        assert answer.status_code == 401
        assert answer.json()["error"]["reason"] == "login_required"


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}])
def test_another_site_is_refused_whatever_the_hosts_auth(client: TestClient, headers: dict[str, str]) -> None:
    """The broker cannot tell a host's cookie from a header: every host caller has its origin checked."""
    for path in ("/direct-stream", "/v1/chat/completions"):
        answer = client.post(path, json={}, headers={"X-User": "alice", **headers})
        assert answer.status_code == 403
        assert answer.json()["error"]["reason"] == "origin_not_allowed"


def test_the_jwks_needs_no_user_and_the_models_do(client: TestClient) -> None:
    assert client.get("/.well-known/jwks.json").json()["keys"]
    assert client.get("/v1/models", headers={"X-User": "alice"}).json()["data"][0]["id"] == "smol"


def test_every_route_with_a_body_has_its_baseline(client: TestClient, gate: FakeGate) -> None:
    for route in (route for route in LANE_ROUTES if route.body is not None):
        answer = client.request(route.method, route.path, json={"model": "smol"}, headers=ALICE)
        assert answer.status_code == 200, route.name
        assert answer.json() == {"served": "/direct" + route.path}
        token = gate.requests[-1].headers["authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, options={"verify_signature": False})
        assert (claims["sub"], claims["grant"]["routes"]) == ("alice", [[route.method, route.path]])


def test_the_lane_off_sends_every_reply_through_the_baseline(tmp_path: Path, gate: FakeGate) -> None:
    with TestClient(_host(tmp_path, gate, lane_on=False), base_url=f"http://{HOST}") as client:
        body = client.post("/direct-stream", json={}, headers=ALICE).json()
        assert (body["supported"], body["reason"], body["fallback_url"]) == (False, "disabled", "/v1/chat/completions")
        assert client.post("/v1/chat/completions", json={}, headers=ALICE).json() == {
            "served": "/direct/v1/chat/completions"
        }


def test_a_host_pins_a_system_prompt_into_each_grant_on_the_lane_and_the_baseline(tmp_path: Path,
                                                                                  gate: FakeGate) -> None:
    """The host decides per request (here by user, asynchronously); the gate enforces what the grant says."""
    async def pin(request: Request) -> str | None:
        return "Answer as the host's helper." if request.headers.get("x-user") == "alice" else None

    app = FastAPI()
    app.include_router(direct_router(_core(tmp_path, gate), who=lambda request: request.headers.get("x-user"),
                                     lane_url="https://lane.example/direct", system_prompt=pin))

    def pinned(token: str) -> object:
        return jwt.decode(token, options={"verify_signature": False})["grant"].get("system_prompt")

    with TestClient(app, base_url=f"http://{HOST}") as client:
        answer = client.post("/direct-stream", json={}, headers=ALICE).json()
        assert answer["grant"]["system_prompt"] == pinned(answer["token"]) == "Answer as the host's helper."
        bob = client.post("/direct-stream", json={}, headers={**ALICE, "X-User": "bob"}).json()
        assert "system_prompt" not in bob["grant"] and pinned(bob["token"]) is None
        client.post("/v1/responses", json={"model": "smol"}, headers=ALICE)
        token = gate.requests[-1].headers["authorization"].removeprefix("Bearer ")
        assert pinned(token) == "Answer as the host's helper."


def test_a_bad_lane_url_or_origin_is_refused_at_mount(tmp_path: Path, gate: FakeGate) -> None:
    core = _core(tmp_path, gate)
    with pytest.raises(ValueError, match="lane_url"):
        direct_router(core, who=lambda _: None, lane_url="/direct")
    with pytest.raises(ValueError, match="allowed_origins"):
        direct_router(core, who=lambda _: None, allowed_origins=["https://app.example/path"])


def test_the_example_app_grants_its_own_users_only(tmp_path: Path, gate: FakeGate) -> None:
    example = example_app()
    users = example.Users(example.users_from("alice:pw1,bob:pw2"))
    app = example.build(_core(tmp_path, gate), users, "https://lane.example/direct")
    basic = {"Authorization": "Basic " + base64.b64encode(b"alice:pw1").decode(), "Origin": ORIGIN}
    wrong = {**basic, "Authorization": "Basic " + base64.b64encode(b"alice:pw2").decode()}
    with TestClient(app, base_url=f"http://{HOST}") as client:
        answer = client.post("/direct-stream", json={}, headers=basic).json()
        assert jwt.decode(answer["token"], options={"verify_signature": False})["sub"] == "alice"
        assert answer["url"] == "https://lane.example/direct"
        assert client.post("/direct-stream", json={}, headers=wrong).status_code == 401
        assert client.post("/direct-stream", json={}, headers={"Origin": ORIGIN}).status_code == 401


def test_the_example_apps_form_login_is_a_session_the_broker_accepts(tmp_path: Path, gate: FakeGate) -> None:
    example = example_app()
    app = example.build(_core(tmp_path, gate), example.Users(example.users_from("alice:pw1")),
                        "https://lane.example/direct")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with TestClient(app, base_url=f"http://{HOST}", follow_redirects=False) as client:
        refused = client.post("/login", content="name=alice&password=pw2", headers=form)
        assert refused.status_code == 401 and "Wrong name or password." in refused.text
        assert "example_session" not in client.cookies
        assert client.post("/login", content="name=alice&password=pw1", headers=form).status_code == 303
        assert client.get("/api/me").json() == {"user": "alice"}
        assert client.post("/direct-stream", json={}, headers={"Origin": ORIGIN}).json()["supported"] is True
        # the broker's CSRF rules hold for the app's cookie: another site's page gets nothing
        evil = client.post("/direct-stream", json={}, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403
        client.post("/logout")
        assert client.get("/api/me").status_code == 401


def test_the_example_app_refuses_users_without_a_password() -> None:
    example = example_app()
    with pytest.raises(SystemExit, match="name:password"):
        example.users_from("alice")
    assert example.users_from(" alice:a:b , bob:c ") == {"alice": "a:b", "bob": "c"}
