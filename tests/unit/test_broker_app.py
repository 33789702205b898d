from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from health_answers import ready_health
from refusal_bodies import reason_for

import broker.static as broker_static
from broker.app import create_app, create_control_app
from broker.core import BrokerCore
from broker.gate_health import GateHealth
from broker.server import GRACEFUL_SHUTDOWN_SECONDS
from broker.sessions import COOKIE_NAME
from broker.settings import (
    ACCESS_TOKEN_ENV,
    CONFIG_ENV,
    BrokerSettings,
    SettingsError,
    access_token_from_env,
    direct_stream_enabled,
)
from broker.signing_keys import KeyRing
from broker.static import static_file
from llama_direct.control import LOADS_PATH, STATE_PATH
from llama_direct.ids import load_or_create_ids
from llama_direct.lanes import LANE_ROUTES
from llama_direct.refusals import CONVERSATION_NOT_OWNED, UNKNOWN_OPTION, UNKNOWN_ROUTE
from llama_direct.replay import Revocations
from llama_direct.runtime import LOG_LEVEL_ENV
from llama_direct.tokens import verify

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


class TestLogin:
    def test_a_valid_token_sets_the_session_and_leaves_the_address_bar(self, h: Harness) -> None:
        answer = h.client.get("/?token=" + ACCESS_TOKEN, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "./"
        assert ACCESS_TOKEN not in answer.headers["location"]
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
        name, _, rest = answer.headers["set-cookie"].partition("=")
        session_id, *flags = rest.split("; ")
        assert name == COOKIE_NAME
        assert flags == ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=2592000"]  # 30 days, kept across restarts
        assert h.core.sessions.user_for(session_id) == "local"
        assert ACCESS_TOKEN not in answer.headers["set-cookie"]

    def test_the_cookie_is_secure_when_the_browser_used_https(self, h: Harness) -> None:
        answer = h.client.get(
            "/?token=" + ACCESS_TOKEN, headers={"X-Forwarded-Proto": "https"}, follow_redirects=False
        )
        assert answer.headers["set-cookie"].endswith("; HttpOnly; SameSite=Strict; Path=/; Max-Age=2592000; Secure")

    def test_a_wrong_token_is_401_json(self, h: Harness) -> None:
        answer = h.client.get("/?token=wrong", follow_redirects=False)
        assert answer.status_code == 401
        assert answer.json() == _error("The access token is not valid.", 401, "authentication_error")
        assert "set-cookie" not in answer.headers
        assert answer.headers["cache-control"] == "no-store"

    def test_a_wrong_token_in_a_browser_is_a_401_page(self, h: Harness) -> None:
        answer = h.client.get("/?token=wrong", headers={"Accept": "text/html"})
        assert answer.status_code == 401
        assert answer.headers["content-type"].startswith("text/html")
        assert "not valid" in answer.text

    def test_after_login_the_page_is_served(self, h: Harness) -> None:
        h.login()
        answer = h.client.get("/")
        assert answer.status_code == 200
        assert answer.text == "<!doctype html><title>chat</title>"
        assert answer.headers["referrer-policy"] == "no-referrer"

    def test_without_a_session_the_page_asks_for_login(self, h: Harness) -> None:
        answer = h.client.get("/", headers={"Accept": "text/html"})
        assert answer.status_code == 401
        assert "Log in first" in answer.text

    def test_a_missing_build_says_how_to_build(self, h: Harness, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
        monkeypatch.setattr(broker_static, "_static_root", lambda: tmp_path / "nothing")
        h.login()
        answer = h.client.get("/")
        assert answer.status_code == 200
        assert "npm run build" in answer.text

    def test_the_token_is_never_logged(self, h: Harness, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level("DEBUG"):
            h.login()
            h.client.get("/?token=wrong-" + ACCESS_TOKEN)
        # The test client logs the URLs it requests itself; what matters is what the broker writes.
        records = [r.getMessage() for r in caplog.records if r.name.startswith(("broker", "uvicorn"))]
        assert any("path=/ status=303" in record for record in records)
        assert all(ACCESS_TOKEN not in record and "token=" not in record for record in records)


class TestStatic:
    def test_assets_need_no_login(self, h: Harness) -> None:
        answer = h.client.get("/app.js")
        assert (answer.status_code, answer.text) == (200, "console.log('page')")
        assert answer.headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert h.client.get("/assets/app.css").headers["content-type"].startswith("text/css")

    @pytest.mark.parametrize("path", ["/index.html", "/missing.js", "/assets", "/.hidden", "/assets/%2e%2e/app.js"])
    def test_no_way_around_the_login_or_out_of_the_folder(self, h: Harness, path: str) -> None:
        answer = h.client.get(path)
        assert answer.status_code == 404
        assert answer.json() == _error("Not found.", 404, "not_found_error")

    def test_segments_are_plain(self) -> None:
        assert static_file("../app.py") is None
        assert static_file("assets//app.css") is None


class TestNegotiation:
    def test_bearer_post_is_supported_with_the_url_from_the_host(self, h: Harness) -> None:
        answer = h.client.post("/direct-stream", headers=BEARER, json={"max_tokens": 100})
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "no-store"
        body = answer.json()
        assert body["supported"] is True
        assert body["url"] == "http://box.lan:8000/direct"
        assert body["grant"] == {"routes": [["POST", "/v1/chat/completions"]], "model": "smol",
                                 "max_tokens": 100, "uses": 1}
        claims = verify(body["token"], keys=h.core.keyring.public_keyset(h.clock.now),
                        audience=h.core.ids.gate_id, issuer=h.core.ids.broker_id, now=h.clock.now)
        assert (claims.sub, claims.scope) == ("local", "chat")

    def test_forwarded_proto_gives_https(self, h: Harness) -> None:
        answer = h.client.post("/direct-stream", headers={**BEARER, "X-Forwarded-Proto": "https"})
        assert answer.json()["url"] == "https://box.lan:8000/direct"

    def test_get_takes_query_parameters(self, h: Harness) -> None:
        answer = h.client.get("/direct-stream?max_tokens=9999&resumable=true", headers=BEARER)
        body = answer.json()
        assert body["grant"]["max_tokens"] == 512
        assert body["conversation_id"] == body["grant"]["conversation_id"]

    def test_without_a_user_it_is_401(self, h: Harness) -> None:
        answer = h.client.post("/direct-stream")
        assert answer.status_code == 401
        assert answer.json() == _error(
            "Log in first: open the login link that llama-direct printed when it started.",
            401, "authentication_error",
        )

    def test_a_wrong_bearer_is_401_even_with_a_cookie(self, h: Harness) -> None:
        h.login()
        answer = h.client.post("/direct-stream", headers={"Authorization": "Bearer nope", "Origin": ORIGIN})
        assert answer.status_code == 401
        assert answer.json() == _error("The access token is not valid.", 401, "authentication_error")

    def test_the_cookie_from_the_apps_own_origin_binds_the_origin(self, h: Harness) -> None:
        h.login()
        body = h.client.post("/direct-stream", headers={"Origin": ORIGIN}).json()
        assert body["grant"]["origin"] == ORIGIN

    def test_a_cookie_get_from_the_same_origin_binds_the_apps_origin(self, h: Harness) -> None:
        h.login()
        body = h.client.get("/direct-stream", headers={"Sec-Fetch-Site": "same-origin"}).json()
        assert body["grant"]["origin"] == ORIGIN

    def test_a_cookie_from_a_foreign_origin_is_403(self, h: Harness) -> None:
        h.login()
        answer = h.client.post("/direct-stream", headers={"Origin": "http://evil.example"})
        assert answer.status_code == 403
        assert answer.json() == _error(
            "Requests from this origin may not use this session.", 403, "permission_error"
        )

    def test_an_allowed_origin_may_use_the_cookie(self, make: HarnessFactory) -> None:
        h = make(allowed_origins=("https://studio.example",), gate_port=9443)
        h.login()
        answer = h.client.post("/direct-stream", headers={"Origin": "https://studio.example"})
        body = answer.json()
        assert body["grant"]["origin"] == "https://studio.example"
        assert body["url"] == "http://box.lan:9443/direct"

    def test_public_url(self, make: HarnessFactory) -> None:
        h = make(public_url="https://proxy.example/llm")
        body = h.client.post("/direct-stream", headers=BEARER).json()
        assert body["url"] == "https://proxy.example/llm/direct"
        assert body["fallback_url"] == "/llm/v1/chat/completions"

    @pytest.mark.parametrize("route", [r for r in LANE_ROUTES if not r.continues_conversation], ids=lambda r: r.name)
    def test_a_route_is_asked_for_by_its_name_in_the_body_or_the_query(self, h: Harness, route: Any) -> None:
        for answer in (h.client.post("/direct-stream", headers=BEARER, json={"route": route.name}),
                       h.client.get(f"/direct-stream?route={route.name}", headers=BEARER)):
            body = answer.json()
            assert (answer.status_code, body["route"], body["scope"]) == (200, route.name, route.scope)
            claims = verify(body["token"], keys=h.core.keyring.public_keyset(h.clock()), audience=h.core.aud,
                            issuer=h.core.iss, now=h.clock())
            assert claims.grant.routes == (route.key,)

    @pytest.mark.parametrize("asked", [{"json": {"route": "nope"}}, {"json": {"route": 3}}, {"params": {"route": "x"}}])
    def test_an_unknown_route_is_400_unknown_route(self, h: Harness, asked: dict[str, Any]) -> None:
        method = h.client.get if "params" in asked else h.client.post
        answer = method("/direct-stream", headers=BEARER, **asked)
        assert answer.status_code == 400
        assert answer.json() == _error(UNKNOWN_ROUTE.message, 400, "invalid_request_error")

    @pytest.mark.parametrize("value", ["0", "false", "off", "OFF"])
    def test_the_toggle_turns_the_lane_off(self, h: Harness, monkeypatch: pytest.MonkeyPatch,
                                           value: str) -> None:
        monkeypatch.setenv("UNSLOTH_DIRECT_STREAM", value)
        assert h.client.post("/direct-stream", headers=BEARER).json() == {
            "supported": False,
            "route": "chat",
            "reason": "disabled",
            "message": "The direct lane is turned off on this server.",
            "fallback_url": "/v1/chat/completions",
        }

    def test_a_loading_model(self, make: HarnessFactory) -> None:
        h = make(FakeGate(health={**READY, "model_ready": False}))
        body = h.client.post("/direct-stream", headers=BEARER).json()
        assert (body["supported"], body["reason"]) == (False, "model_loading")

    def test_a_gate_that_is_down(self, make: HarnessFactory) -> None:
        h = make(FakeGate(reachable=False))
        body = h.client.post("/direct-stream", headers=BEARER).json()
        assert (body["supported"], body["reason"]) == (False, "gate_down")

    def test_resume_own_conversation_and_refuse_an_unknown_one(self, h: Harness) -> None:
        conversation_id = h.client.post("/direct-stream", headers=BEARER, json={"resumable": True}).json()[
            "conversation_id"
        ]
        body = h.client.post("/direct-stream", headers=BEARER, json={"resume": conversation_id}).json()
        assert body["grant"]["routes"] == [["GET", "/v1/stream"]]
        refused = h.client.post("/direct-stream", headers=BEARER, json={"cancel": "someone-elses"})
        assert refused.status_code == 403
        assert refused.json() == _error(CONVERSATION_NOT_OWNED.message, 403, "permission_error")

    def test_an_unknown_option_is_400(self, h: Harness) -> None:
        answer = h.client.post("/direct-stream", headers=BEARER, json={"uses": 10})
        assert answer.status_code == 400
        assert answer.json() == _error(UNKNOWN_OPTION.message, 400, "invalid_request_error")

    def test_past_the_rate_it_is_429_with_retry_after(self, make: HarnessFactory) -> None:
        h = make(rate_per_minute=30, burst=2)
        assert [h.client.post("/direct-stream", headers=BEARER).status_code for _ in range(2)] == [200, 200]
        answer = h.client.post("/direct-stream", headers=BEARER)
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "2"
        assert answer.json() == _error(
            "Too many requests: wait a moment, then try again.", 429, "invalid_request_error"
        )
        h.clock.now += 2
        assert h.client.post("/direct-stream", headers=BEARER).status_code == 200

    def test_p50_in_process(self, tmp_path: Path) -> None:
        """A benchmark, not a timed test: the figure is printed, only the answers are checked."""
        app = create_app(_settings(tmp_path, burst=1000), ACCESS_TOKEN)
        app.state.core.gate.health = GateHealth.from_answer(READY)

        async def run() -> list[float]:
            samples = []
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as client:
                for _ in range(500):
                    started = time.perf_counter()
                    answer = await client.post("/direct-stream", headers=BEARER, json={"max_tokens": 64})
                    samples.append(time.perf_counter() - started)
                    assert answer.json()["supported"] is True
            return samples

        samples = asyncio.run(run())
        print(f"\nPOST /direct-stream in-process p50 = {statistics.median(samples) * 1e3:.3f} ms")


class TestRevocation:
    def _token_claims(self, h: Harness) -> Any:
        token = h.client.post("/direct-stream", headers=BEARER).json()["token"]
        return verify(token, keys=h.core.keyring.public_keyset(h.clock.now), audience=h.core.ids.gate_id,
                      issuer=h.core.ids.broker_id, now=h.clock.now)

    def test_revoke_refuses_earlier_tokens_but_not_later_ones(self, h: Harness) -> None:
        before = self._token_claims(h)
        answer = h.client.post("/direct-stream/revoke", headers=BEARER)
        assert answer.json() == {"revoked": True, "not_before": 1_750_000_001}
        after = self._token_claims(h)
        assert h.core.revocations.is_revoked(before) is True
        assert h.core.revocations.is_revoked(after) is False

    def test_the_gate_pulls_revocations_and_keys_from_the_control_app(self, h: Harness) -> None:
        h.client.post("/direct-stream/revoke", headers=BEARER)
        control = TestClient(create_control_app(h.core))
        pulled = control.get("/revocations").json()
        assert pulled == {"not_before": {"local": 1_750_000_001}}
        assert Revocations.from_dict(pulled).to_dict() == h.core.revocations.to_dict()
        assert control.get("/jwks").json() == h.core.keyring.jwks(h.clock.now)

    def test_the_state_long_poll_answers_a_revocation_at_once_and_304_when_nothing_changed(
        self, h: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import broker.app

        monkeypatch.setattr(broker.app, "HOLD_SECONDS", 0.3)

        async def scenario() -> None:
            transport = httpx.ASGITransport(app=create_control_app(h.core))
            async with httpx.AsyncClient(transport=transport, base_url="http://control") as control:
                first = (await control.get("/state")).json()
                assert first["jwks"] == h.core.keyring.jwks(h.clock.now)
                assert first["revocations"] == {"not_before": {}}
                started = time.monotonic()
                unchanged = await control.get("/state", params={"known": first["version"]})
                assert unchanged.status_code == 304
                assert time.monotonic() - started >= 0.29
                held = asyncio.ensure_future(control.get("/state", params={"known": first["version"]}))
                await asyncio.sleep(0.05)
                assert not held.done()
                h.core.revoke("local")
                answer = await asyncio.wait_for(held, 0.2)
                assert answer.status_code == 200
                assert answer.json()["revocations"] == {"not_before": {"local": 1_750_000_001}}
                assert answer.json()["version"] != first["version"]
                stale = await asyncio.wait_for(control.get("/state", params={"known": "stale"}), 0.2)
                assert stale.json() == answer.json()

        asyncio.run(scenario())

    def test_logout_ends_the_session_and_revokes(self, h: Harness) -> None:
        h.login()
        answer = h.client.post("/logout", headers={"Origin": ORIGIN})
        assert answer.status_code == 200
        assert answer.headers["set-cookie"] == f"{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        assert len(h.core.sessions) == 0
        assert h.core.revocations.to_dict() == {"not_before": {"local": 1_750_000_001}}
        assert h.client.post("/direct-stream", headers={"Origin": ORIGIN}).status_code == 401


class TestJwks:
    @pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
    def test_an_independent_verifier_checks_a_minted_token(self, make: HarnessFactory, algorithm: str) -> None:
        h = make(algorithm=algorithm)
        token = h.client.post("/direct-stream", headers=BEARER).json()["token"]
        answer = h.client.get("/.well-known/jwks.json")
        assert answer.status_code == 200
        keyset = jwt.PyJWKSet.from_dict(answer.json())
        kid = jwt.get_unverified_header(token)["kid"]
        payload = jwt.decode(
            token, keyset[kid].key, algorithms=[algorithm], audience=h.core.ids.gate_id,
            issuer=h.core.ids.broker_id, options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
        assert payload["sub"] == "local"
        assert payload["exp"] - payload["iat"] == 30


class TestBaseline:
    def test_the_request_goes_through_the_gate_with_a_token_of_its_own(self, h: Harness) -> None:
        sent = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
        answer = h.client.post("/v1/chat/completions", headers={**BEARER, "Content-Type": "application/json"},
                               content=sent)
        assert answer.status_code == 200
        assert answer.content == SSE
        assert answer.headers["content-type"] == "text/event-stream"
        relayed = h.gate.last_chat()
        assert relayed.content == sent
        assert "origin" not in relayed.headers
        scheme, _, token = relayed.headers["authorization"].partition(" ")
        assert scheme == "Bearer" and token != ACCESS_TOKEN
        claims = verify(token, keys=h.core.keyring.public_keyset(h.clock.now), audience=h.core.ids.gate_id,
                        issuer=h.core.ids.broker_id, now=h.clock.now)
        assert (claims.sub, claims.scope) == ("local", "chat")
        assert claims.grant.to_claim() == {"routes": [["POST", "/v1/chat/completions"]], "model": "smol",
                                           "max_tokens": 512, "uses": 1}

    def test_a_non_streaming_answer_and_a_gate_refusal_pass_through(self, make: HarnessFactory) -> None:
        refusal = b'{"error":{"message":"The token does not allow this route.","type":"permission_error","code":403}}'
        h = make(FakeGate(chat_status=403, chat_body=refusal, chat_type="application/json"))
        answer = h.client.post("/v1/chat/completions", headers=BEARER, json={"messages": []})
        assert (answer.status_code, answer.content) == (403, refusal)
        assert answer.headers["content-type"] == "application/json"

    def test_a_token_older_than_a_gate_restart_is_minted_again_once_for_the_next_second(
            self, make: HarnessFactory) -> None:
        h = make(FakeGate(predates_gate=1))
        answer = h.client.post("/v1/chat/completions", headers=BEARER, json={"messages": []})
        assert answer.status_code == 200
        first, second = [r for r in h.gate.requests if r.url.path.startswith("/direct/")]
        iats = [verify(r.headers["authorization"].removeprefix("Bearer "),
                       keys=h.core.keyring.public_keyset(h.clock.now), audience=h.core.ids.gate_id,
                       issuer=h.core.ids.broker_id, now=h.clock.now).iat for r in (first, second)]
        assert iats[1] == math.floor(h.clock.now) + 1 and iats[0] <= iats[1] - 1
        again = make(FakeGate(predates_gate=2))
        refused = again.client.post("/v1/chat/completions", headers=BEARER, json={"messages": []})
        assert refused.status_code == 401 and refused.json()["error"]["reason"] == "token_predates_gate"
        assert len([r for r in again.gate.requests if r.url.path.startswith("/direct/")]) == 2

    def test_a_gate_that_cannot_be_reached_is_503_without_details(self, make: HarnessFactory) -> None:
        h = make(FakeGate(reachable=False))
        answer = h.client.post("/v1/chat/completions", headers=BEARER, json={"messages": []})
        assert answer.status_code == 503
        assert answer.json() == _error("The gate is not answering; try again in a moment.", 503, "server_error")

    def test_it_needs_a_user(self, h: Harness) -> None:
        assert h.client.post("/v1/chat/completions", json={"messages": []}).status_code == 401
        assert h.gate.chats() == []

    def test_models_lists_the_alias(self, h: Harness) -> None:
        assert h.client.get("/v1/models", headers=BEARER).json() == {
            "object": "list",
            "data": [{"id": "smol", "object": "model", "created": 0, "owned_by": "llama-direct", "status": "loaded",
                      "vision": False}],
        }


ROUTER_READY = {**READY, "router": True, "models": [{"id": "smol", "status": "loaded", "vision": False},
                                                    {"id": "beta", "status": "unloaded", "vision": False}]}


class TestBaselineModels:
    """The fallback lane serves the model the body names, as negotiation would grant it."""

    @staticmethod
    def _router(make: HarnessFactory, **overrides: Any) -> Harness:
        return make(FakeGate(health=dict(ROUTER_READY)), models=("smol", "beta"), **overrides)

    @staticmethod
    def _grant(h: Harness) -> dict[str, Any]:
        token = h.gate.last_chat().headers["authorization"].partition(" ")[2]
        claims = verify(token, keys=h.core.keyring.public_keyset(h.clock.now), audience=h.core.ids.gate_id,
                        issuer=h.core.ids.broker_id, now=h.clock.now)
        return claims.grant.to_claim()

    def test_the_model_in_the_body_is_the_grants(self, make: HarnessFactory) -> None:
        h = self._router(make)
        answer = h.client.post("/v1/chat/completions", headers=BEARER, json={"model": "beta", "messages": []})
        assert answer.status_code == 200
        assert self._grant(h)["model"] == "beta"
        assert json.loads(h.gate.last_chat().content)["model"] == "beta"

    def test_no_model_or_null_is_the_default(self, make: HarnessFactory) -> None:
        h = self._router(make)
        for body in ({"messages": []}, {"model": None, "messages": []}):
            assert h.client.post("/v1/chat/completions", headers=BEARER, json=body).status_code == 200
            assert self._grant(h)["model"] == "smol"

    def test_a_body_that_is_not_json_goes_to_the_gate_for_the_default(self, make: HarnessFactory) -> None:
        h = self._router(make)
        h.client.post("/v1/chat/completions", headers=BEARER, content=b"{not json")
        assert self._grant(h)["model"] == "smol" and h.gate.last_chat().content == b"{not json"

    def test_a_model_not_offered_is_400_naming_it_only_when_safe(self, make: HarnessFactory) -> None:
        h = self._router(make)
        sent = len(h.gate.requests)
        for model, param in (("gamma", "gamma"), ("../../etc/passwd", None), (7, None)):
            answer = h.client.post("/v1/chat/completions", headers=BEARER, json={"model": model, "messages": []})
            assert answer.status_code == 400
            error = answer.json()["error"]
            assert error["reason"] == "unknown_model" and error.get("param") == param
            assert "passwd" not in answer.text
        assert [r.url.path for r in h.gate.requests[sent:]] == [], "nothing reached the gate"

    def test_a_single_model_server_refuses_another_name(self, h: Harness) -> None:
        answer = h.client.post("/v1/chat/completions", headers=BEARER, json={"model": "beta", "messages": []})
        assert (answer.status_code, answer.json()["error"]["reason"]) == (400, "unknown_model")
        assert h.client.post("/v1/chat/completions", headers=BEARER,
                             json={"model": "smol", "messages": []}).status_code == 200

    def test_autoload_false_reaches_the_grant(self, make: HarnessFactory) -> None:
        h = self._router(make)
        answer = h.client.post("/v1/chat/completions?autoload=false", headers=BEARER,
                               json={"model": "beta", "messages": []})
        assert answer.status_code == 200
        assert self._grant(h)["autoload"] is False
        h.client.post("/v1/chat/completions?autoload=true", headers=BEARER, json={"model": "beta", "messages": []})
        assert "autoload" not in self._grant(h)

    def test_a_bad_autoload_is_400(self, make: HarnessFactory) -> None:
        h = self._router(make)
        for query in ("autoload=maybe", "autoload=true&autoload=false"):
            answer = h.client.post("/v1/chat/completions?" + query, headers=BEARER, json={"messages": []})
            assert (answer.status_code, answer.json()["error"]["reason"]) == (400, "invalid_option")

    def test_negotiation_and_the_fallback_no_longer_charge_loads(self, make: HarnessFactory) -> None:
        """The gate charges a load as it forwards the request that causes it (issue 25): a grant minted
        while the model was loaded, used after an eviction, loaded it for free."""
        h = self._router(make, load_rate_per_minute=1)
        beta = {"model": "beta", "messages": []}
        for _ in range(3):
            assert _negotiated(h, model="beta").status_code == 200
            assert h.client.post("/v1/chat/completions", headers=BEARER, json=beta).status_code == 200

    def test_the_gate_charges_each_load_to_its_user_at_the_control_app(self, make: HarnessFactory) -> None:
        h = self._router(make, load_rate_per_minute=2)
        control = TestClient(create_control_app(h.core))
        charge = {"user": "ann", "model": "beta"}
        assert [control.post(LOADS_PATH, json=charge).status_code for _ in range(2)] == [204, 204]
        limited = control.post(LOADS_PATH, json=charge)
        assert (limited.status_code, limited.json()["error"]["reason"]) == (429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert control.post(LOADS_PATH, json={"user": "bob", "model": "beta"}).status_code == 204, "per user"
        h.clock.now += 30
        assert control.post(LOADS_PATH, json=charge).status_code == 204, "one load back every 30 s"
        for bad in ({"user": "ann"}, {"user": "", "model": "beta"}, {"user": "ann", "model": 1, "x": 2}, []):
            answer = control.post(LOADS_PATH, json=bad)
            assert (answer.status_code, answer.json()["error"]["reason"]) == (400, "bad_load_charge")

    @staticmethod
    def _poll(h: Harness, states: dict[str, str]) -> None:
        h.gate.health = {**READY, "models": [{"id": name, "status": state, "vision": False}
                                             for name, state in states.items()]}
        h.client.portal.call(h.core.gate.poll_once)


def _negotiated(h: Harness, **body: Any) -> httpx.Response:
    return h.client.post("/direct-stream", headers=BEARER, json=body)


class TestErrors:
    def test_an_unknown_route_is_json(self, h: Harness) -> None:
        answer = h.client.post("/nowhere", headers=BEARER)
        assert answer.status_code == 405
        assert answer.json() == _error("Method not allowed.", 405, "invalid_request_error")

    def test_anything_unforeseen_is_a_generic_500(self, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        def broken(now: float) -> dict[str, Any]:
            raise RuntimeError("/tmp/ld-x/keys/secret.pem unreadable")

        monkeypatch.setattr(h.core.keyring, "jwks", broken)
        answer = h.client.get("/.well-known/jwks.json")
        assert answer.status_code == 500
        assert answer.json() == _error("Internal error.", 500, "server_error")
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "secret" not in answer.text

    def test_the_echo_tool(self, h: Harness) -> None:
        assert h.client.post("/tools/echo", headers=BEARER, json={"text": "ping"}).json() == {"result": "ping"}
        bad = h.client.post("/tools/echo", headers=BEARER, json={"text": 5})
        assert bad.status_code == 400
        assert bad.json() == _error('The echo tool takes {"text": "..."}.', 400, "invalid_request_error")

    def test_a_body_too_large(self, h: Harness) -> None:
        answer = h.client.post("/tools/echo", headers=BEARER, content=b"x" * (64 * 1024 + 1))
        assert answer.status_code == 413
        assert answer.json() == _error("The request body is too large.", 413, "invalid_request_error")


def test_ids_are_made_once_and_kept(tmp_path: Path) -> None:
    first = load_or_create_ids(tmp_path / "data")
    assert load_or_create_ids(tmp_path / "data") == first
    assert first.broker_id != first.gate_id
    assert (tmp_path / "data" / "ids.json").stat().st_mode & 0o777 == 0o600


def test_a_token_is_never_minted_before_the_gates_start_cut_off(tmp_path: Path) -> None:
    """The gate refuses an `iat` before the second after it started; minted in that second, a token
    takes the cut-off as its `iat` (the gate's leeway lets it start at once) instead of a 401."""
    core = BrokerCore(_settings(tmp_path), ACCESS_TOKEN)
    assert core.mint_time("user", 1000.4) == 1000.4
    core.gate.health = GateHealth(up=True, model_ready=True, not_issued_before=1001)
    assert core.mint_time("user", 1000.4) == 1001
    assert core.mint_time("user", 1002.7) == 1002.7


def test_a_given_keyring_is_used(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys", "ES256")
    ring.load_or_create(0.0)
    core = BrokerCore(_settings(tmp_path), ACCESS_TOKEN, keyring=ring)
    assert core.keyring.current.kid == ring.current.kid


def test_a_key_in_the_keys_dir_that_others_can_read_stops_the_broker_in_one_line(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "data" / "keys", "EdDSA")
    ring.load_or_create(0.0)
    (tmp_path / "data" / "keys" / f"{ring.current.kid}.pem").chmod(0o640)
    with pytest.raises(SettingsError, match=r"^keys dir: .*chmod 600") as caught:
        BrokerCore(_settings(tmp_path), ACCESS_TOKEN)
    assert "\n" not in str(caught.value) and str(tmp_path) not in str(caught.value)


class TestScheduledRotation:
    def test_a_successor_is_published_before_it_signs_and_the_old_key_stays_published(
        self, make: HarnessFactory
    ) -> None:
        h = make(key_rotation_hours=1)

        def kid_of_a_new_token() -> str:
            token = h.client.post("/direct-stream", headers=BEARER).json()["token"]
            return str(jwt.get_unverified_header(token)["kid"])

        def published() -> list[str]:
            return [k["kid"] for k in h.client.get("/.well-known/jwks.json").json()["keys"]]

        first = kid_of_a_new_token()
        h.clock.now += 3600
        assert kid_of_a_new_token() == first  # this mint staged the successor; it does not sign yet
        staged = [kid for kid in published() if kid != first]
        assert len(staged) == 1
        h.clock.now += 2
        assert kid_of_a_new_token() == staged[0]
        assert published() == [staged[0], first]

    def test_zero_hours_never_rotates(self, make: HarnessFactory) -> None:
        h = make(key_rotation_hours=0)
        first = h.client.post("/direct-stream", headers=BEARER).json()["token"]
        h.clock.now += 10 * 365 * 86400 / 100
        later = h.client.post("/direct-stream", headers=BEARER).json()["token"]
        assert jwt.get_unverified_header(later)["kid"] == jwt.get_unverified_header(first)["kid"]
        assert len(h.client.get("/.well-known/jwks.json").json()["keys"]) == 1


class TestConfiguredSigningKey:
    """`--signing-key-file`: one key the operator manages, e.g. shared with a gateway such as HAProxy."""

    def _write_key(self, path: Path, mode: int = 0o600) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path.write_bytes(pem)
        path.chmod(mode)
        return pem.decode("ascii")

    def test_tokens_are_signed_with_the_configured_key_and_its_algorithm(
        self, make: HarnessFactory, tmp_path: Path
    ) -> None:
        key_file = tmp_path / "signing.pem"
        self._write_key(key_file)
        h = make(signing_key_file=key_file)
        token = h.client.post("/direct-stream", headers=BEARER).json()["token"]
        assert jwt.get_unverified_header(token)["alg"] == "ES256"
        keyset = jwt.PyJWKSet.from_dict(h.client.get("/.well-known/jwks.json").json())
        assert [k.key_id for k in keyset.keys] == [h.core.keyring.current.kid]
        assert not (tmp_path / "data" / "keys").exists()

    @pytest.mark.parametrize(
        ("prepare", "reason"),
        [
            ("missing", "signing_key_file does not exist"),
            ("world-readable", "signing_key_file: the signing key file must be readable by its owner only (chmod 600)"),
            ("not-a-key", "signing_key_file: the signing key file is not an unencrypted Ed25519 or P-256 PEM key"),
        ],
    )
    def test_an_unusable_key_file_is_a_settings_error_that_quotes_nothing(
        self, tmp_path: Path, prepare: str, reason: str
    ) -> None:
        key_file = tmp_path / "signing.pem"
        if prepare == "world-readable":
            pem = self._write_key(key_file, 0o644)
        elif prepare == "not-a-key":
            pem = "not a key at all"
            key_file.write_text(pem)
            key_file.chmod(0o600)
        else:
            pem = ""
        with pytest.raises(SettingsError) as refused:
            BrokerCore(_settings(tmp_path, signing_key_file=key_file), ACCESS_TOKEN)
        assert str(refused.value) == reason
        assert str(tmp_path) not in str(refused.value)
        assert not pem or pem not in str(refused.value)


class TestSettings:
    def _raw(self, tmp_path: Path) -> dict[str, Any]:
        return {
            "data_dir": str(tmp_path / "data"),
            "broker_socket": str(tmp_path / "broker.sock"),
            "control_socket": str(tmp_path / "control.sock"),
            "gate_socket": str(tmp_path / "gate.sock"),
            "model": "smol",
        }

    def test_from_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        raw = {**self._raw(tmp_path), "allowed_origins": ["https://studio.example"], "gate_port": 9443,
               "algorithm": "ES256"}
        (tmp_path / "broker.json").write_text(json.dumps(raw))
        monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "broker.json"))
        settings = BrokerSettings.from_env()
        assert settings == BrokerSettings(
            data_dir=tmp_path / "data", broker_socket=tmp_path / "broker.sock",
            control_socket=tmp_path / "control.sock", gate_socket=tmp_path / "gate.sock", model="smol",
            allowed_origins=("https://studio.example",), gate_port=9443, algorithm="ES256",
        )
        assert (settings.token_ttl, settings.max_tokens_cap) == (30, 2048)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"algorithm": "HS256"}, "algorithm must be one of EdDSA, ES256"),
            ({"token_ttl": 301}, "token_ttl must be between 1 and 300 seconds"),
            ({"gate_port": "9443"}, "broker.json: gate_port must be an integer or null"),
            ({"public_url": "ftp://x"}, "public_url must be an http(s) URL without query or fragment"),
            ({"allowed_origins": ["https://a.example/path"]},
             "allowed_origins must be origins like https://app.example:8443"),
            ({"access_token": "x" * 20}, "broker.json has unknown fields: access_token"),
            ({"model": ""}, "model must be a non-empty alias"),
            ({"key_rotation_hours": -1}, "key_rotation_hours must be between 0 (never) and 8760"),
            ({"key_rotation_hours": "24"}, "broker.json: key_rotation_hours must be a number"),
        ],
    )
    def test_bad_settings_name_the_field_not_the_value(self, tmp_path: Path, change: dict[str, Any],
                                                        message: str) -> None:
        with pytest.raises(SettingsError) as excinfo:
            BrokerSettings.from_dict({**self._raw(tmp_path), **change})
        assert str(excinfo.value) == message

    def test_a_missing_path(self, tmp_path: Path) -> None:
        raw = self._raw(tmp_path)
        del raw["gate_socket"]
        with pytest.raises(SettingsError) as excinfo:
            BrokerSettings.from_dict(raw)
        assert str(excinfo.value) == "broker.json lacks gate_socket"

    def test_an_unreadable_file_names_no_path(self, tmp_path: Path) -> None:
        with pytest.raises(SettingsError) as excinfo:
            BrokerSettings.from_file(tmp_path / "absent.json")
        assert str(excinfo.value) == "broker.json cannot be read"
        (tmp_path / "broken.json").write_text('{"model": ')
        with pytest.raises(SettingsError) as excinfo:
            BrokerSettings.from_file(tmp_path / "broken.json")
        assert str(excinfo.value) == "broker.json is not JSON"

    def test_the_access_token_comes_from_the_environment(self) -> None:
        assert access_token_from_env({ACCESS_TOKEN_ENV: ACCESS_TOKEN}) == ACCESS_TOKEN
        with pytest.raises(SettingsError, match="is not set"):
            access_token_from_env({})
        with pytest.raises(SettingsError, match="at least 8 characters"):
            access_token_from_env({ACCESS_TOKEN_ENV: "short"})

    @pytest.mark.parametrize(("value", "enabled"), [(None, True), ("1", True), ("0", False), ("false", False),
                                                    ("Off", False), (" off ", False), ("yes", True)])
    def test_the_toggle(self, value: str | None, enabled: bool) -> None:
        assert direct_stream_enabled({} if value is None else {"UNSLOTH_DIRECT_STREAM": value}) is enabled


def test_the_server_runs_both_apps_on_private_sockets_and_stops_cleanly(tmp_path: Path) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="ld-"))
    raw = {
        "data_dir": str(tmp_path / "data"),
        "broker_socket": str(runtime / "broker.sock"),
        "control_socket": str(runtime / "control.sock"),
        "gate_socket": str(runtime / "gate.sock"),
        "model": "smol",
    }
    (tmp_path / "broker.json").write_text(json.dumps(raw))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(runtime / "broker.sock"))
    stale.close()
    # DEBUG: a successful request is logged only there (the page's polls drowned the INFO log)
    env = {**os.environ, CONFIG_ENV: str(tmp_path / "broker.json"), ACCESS_TOKEN_ENV: ACCESS_TOKEN,
           LOG_LEVEL_ENV: "DEBUG"}
    process = subprocess.Popen([sys.executable, "-m", "broker"], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (runtime / "control.sock").exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        for name in ("broker.sock", "control.sock"):
            assert (runtime / name).stat().st_mode & 0o777 == 0o600
        public = httpx.Client(transport=httpx.HTTPTransport(uds=str(runtime / "broker.sock")), base_url="http://x")
        control = httpx.Client(transport=httpx.HTTPTransport(uds=str(runtime / "control.sock")), base_url="http://x")
        with public, control:
            deadline = time.monotonic() + 10
            while True:
                try:
                    login = public.get("/?token=" + ACCESS_TOKEN)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert login.status_code == 303
            answer = public.post("/direct-stream", headers={**BEARER, "Host": HOST}).json()
            assert (answer["supported"], answer["reason"]) == (False, "gate_down")
            assert control.get("/jwks").json()["keys"][0]["alg"] == "EdDSA"
            held: list[int] = []
            version = control.get(STATE_PATH).json()["version"]
            poll = threading.Thread(target=lambda: held.append(
                control.get(STATE_PATH, params={"known": version}, timeout=30).status_code))
            poll.start()  # the gate's long poll, held for 10 s unless something changes
            time.sleep(0.5)
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=15)
            stopped_in = time.monotonic() - stopping
            poll.join(5)
        assert process.returncode == 0
        log = stderr.decode()
        # the held poll answered at once: the stop ends in time, with no request cancelled and logged
        assert held == [304] and stopped_in < GRACEFUL_SHUTDOWN_SECONDS
        assert "Traceback" not in log and "Exception in ASGI application" not in log
        assert "event=request method=GET path=/ status=303" in log
        assert ACCESS_TOKEN not in log
        assert not (runtime / "broker.sock").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(runtime)
