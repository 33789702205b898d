"""The broker app's baseline route: the chat relayed through the gate, and the models it offers."""

from __future__ import annotations

import json
import math
from typing import Any

from broker_harness import (
    ACCESS_TOKEN,
    BEARER,
    READY,
    SSE,
    FakeGate,
    Harness,
    HarnessFactory,
    _error,
    _negotiated,
)
from fastapi.testclient import TestClient

from broker.app import create_control_app
from llama_direct.control import LOADS_PATH
from llama_direct.tokens import verify


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
