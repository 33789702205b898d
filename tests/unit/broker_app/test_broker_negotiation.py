"""The broker app's negotiation of lane tokens, their revocation, and the JWKS it publishes."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from broker_harness import (
    ACCESS_TOKEN,
    BEARER,
    HOST,
    ORIGIN,
    READY,
    FakeGate,
    Harness,
    HarnessFactory,
    _error,
    _settings,
)
from fastapi.testclient import TestClient

from broker.app import create_app, create_control_app
from broker.gate_health import GateHealth
from broker.sessions import COOKIE_NAME
from llama_direct.lanes import LANE_ROUTES
from llama_direct.refusals import CONVERSATION_NOT_OWNED, UNKNOWN_OPTION, UNKNOWN_ROUTE
from llama_direct.replay import Revocations
from llama_direct.tokens import verify


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

    def test_a_logout_refuses_a_token_minted_at_the_gates_later_start_second(self, make: HarnessFactory) -> None:
        """The gate started a moment ago: tokens are minted at its cut-off, the next second. A logout in
        the same second must still cover them (from the clock alone, it would not: CI saw it)."""
        h = make(FakeGate(health={**READY, "not_issued_before": 1_750_000_001}))
        before = self._token_claims(h)
        assert before.iat == 1_750_000_001
        assert h.client.post("/direct-stream/revoke", headers=BEARER).json()["not_before"] == 1_750_000_002
        assert h.core.revocations.is_revoked(before) is True
        assert h.core.revocations.is_revoked(self._token_claims(h)) is False

    def test_a_second_logout_in_the_same_second_refuses_what_was_minted_between(self, h: Harness) -> None:
        h.client.post("/direct-stream/revoke", headers=BEARER)
        between = self._token_claims(h)
        assert between.iat == 1_750_000_001  # born at the first logout's second, not refused by it
        assert h.core.revocations.is_revoked(between) is False
        h.client.post("/direct-stream/revoke", headers=BEARER)
        assert h.core.revocations.is_revoked(between) is True
        assert h.core.revocations.is_revoked(self._token_claims(h)) is False

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
