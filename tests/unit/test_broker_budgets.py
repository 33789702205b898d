"""Budgets at the broker: negotiation and the baseline reserve a grant's max_tokens from the user's
tokens per day, cap the grant at what remains, refuse under 16 with budget_exhausted; the gate's usage
report (POST /usage on the control socket) settles, and returns the unused part."""

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

from broker.app import create_app, create_control_app
from broker.core import BrokerCore
from broker.settings import BrokerSettings
from broker.signing_keys import SigningKey
from llama_direct.budgets import MY_USAGE_PATH, UsageReport, day_name, day_of
from llama_direct.control import USAGE_PATH, usage_batches, usage_report
from llama_direct.lanes import UNUSED_GRANT_HEADER
from llama_direct.users import Limits, NewSecrets, User, new_secrets, new_user

ACCESS_TOKEN = "test-access-token-0123456789"
HEALTH: dict[str, Any] = {
    "gate": "ok", "model_ready": True, "model": "smol", "vision": False, "slots": {"total": None, "busy": None},
    "router": False, "models": [{"id": "smol", "status": "loaded", "vision": False}],
}
SSE = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'


@dataclass
class Box:
    client: TestClient
    control: TestClient
    core: BrokerCore
    minted: list[str]

    def add(self, name: str, **limits: Any) -> tuple[User, NewSecrets]:
        user, made = new_user(name, Limits(**limits), time.time()), new_secrets()
        self.core.users.add(user, made.records())
        return user, made

    def negotiate(self, bearer: str, **body: Any) -> httpx.Response:
        return self.client.post("/direct-stream", json=body, headers={"Authorization": f"Bearer {bearer}"})

    def report(self, claims: dict[str, Any], completion: int | None, phase: str = "ended") -> httpx.Response:
        usage = UsageReport(claims["jti"], claims["sub"], "smol", "chat", "direct", phase, 7, completion)
        [body] = usage_batches([usage])
        return self.control.post(USAGE_PATH, content=body, headers={"Content-Type": "application/json"})

    def baseline(self, bearer: str, unused_grant: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {bearer}"}
        if unused_grant is not None:
            headers[UNUSED_GRANT_HEADER] = unused_grant
        return self.client.post("/v1/chat/completions", json={"messages": []}, headers=headers)

    def day_used(self, user: User) -> int:
        return self.core.users.budget_windows(user.id, time.time())[0]


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Box]:
    monkeypatch.delenv("UNSLOTH_DIRECT_STREAM", raising=False)
    settings = BrokerSettings(data_dir=tmp_path / "data", broker_socket=tmp_path / "b.sock",
                              control_socket=tmp_path / "c.sock", gate_socket=tmp_path / "g.sock", model="smol",
                              max_tokens_cap=512, rate_per_minute=600, burst=50)
    minted: list[str] = []
    spent: set[str] = set()

    def gate(request: httpx.Request) -> httpx.Response:
        """The gate's lane: each grant id is served once, as its replay store would."""
        if request.url.path == "/health":
            return httpx.Response(200, json=HEALTH)
        token = request.headers["authorization"].removeprefix("Bearer ")
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        if jti in spent:
            return httpx.Response(401, json={"error": {"reason": "token_spent"}})
        spent.add(jti)
        minted.append(token)
        return httpx.Response(200, content=SSE, headers={"content-type": "text/event-stream"})

    app = create_app(settings, ACCESS_TOKEN, gate_transport=httpx.MockTransport(gate))
    with TestClient(app) as client, TestClient(create_control_app(app.state.core)) as control:
        yield Box(client, control, app.state.core, minted)


def claims_of(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    claims: dict[str, Any] = jwt.decode(answer.json()["token"], options={"verify_signature": False})
    assert claims["grant"]["max_tokens"] == answer.json()["grant"]["max_tokens"]
    return claims


def test_grants_are_capped_at_what_remains_then_refused(box: Box) -> None:
    ann, made = box.add("ann", tokens_per_day=100)
    _, bob = box.add("bob", tokens_per_day=100)
    first = claims_of(box.negotiate(made.api_key, max_tokens=80))
    second = claims_of(box.negotiate(made.api_key, max_tokens=80))
    assert (first["grant"]["max_tokens"], second["grant"]["max_tokens"]) == (80, 20)
    refused = box.negotiate(made.api_key, max_tokens=80)
    assert refused.status_code == 429 and refused.json()["error"]["reason"] == "budget_exhausted"
    assert 0 < int(refused.headers["retry-after"]) <= 86_400
    assert claims_of(box.negotiate(bob.api_key, max_tokens=80))["grant"]["max_tokens"] == 80
    assert box.day_used(ann) == 100


def test_settlement_returns_the_unused_part_and_an_unseen_end_costs_it_all(box: Box) -> None:
    ann, made = box.add("ann", tokens_per_day=100)
    first = claims_of(box.negotiate(made.api_key, max_tokens=80))
    second = claims_of(box.negotiate(made.api_key, max_tokens=80))
    assert box.report(first, None, "started").status_code == 204
    assert box.report(first, 30).status_code == 204
    assert box.day_used(ann) == 50
    assert claims_of(box.negotiate(made.api_key, max_tokens=80))["grant"]["max_tokens"] == 50
    box.report(second, None)  # the end was not seen: its whole 20
    assert box.day_used(ann) == 100
    [row] = box.core.users.ledger(day_of(time.time()), ann.id)
    assert (row.requests, row.prompt_tokens, row.completion_tokens, row.unseen) == (2, 14, 50, 1)


def test_the_baseline_reserves_what_the_body_asks(box: Box) -> None:
    ann, made = box.add("ann", tokens_per_day=100)
    answer = box.client.post("/v1/chat/completions", json={"messages": [], "max_tokens": 10},
                             headers={"Authorization": f"Bearer {made.api_key}"})
    assert answer.status_code == 200
    claims = jwt.decode(box.minted[-1], options={"verify_signature": False})
    assert claims["grant"]["max_tokens"] == 10 and box.day_used(ann) == 10
    unbounded = box.client.post("/v1/chat/completions", json={"messages": []},
                                headers={"Authorization": f"Bearer {made.api_key}"})
    assert unbounded.status_code == 200
    assert jwt.decode(box.minted[-1], options={"verify_signature": False})["grant"]["max_tokens"] == 90
    refused = box.client.post("/v1/chat/completions", json={"messages": []},
                              headers={"Authorization": f"Bearer {made.api_key}"})
    assert refused.status_code == 429 and refused.json()["error"]["reason"] == "budget_exhausted"


def test_the_owner_and_users_without_token_limits_reserve_nothing(box: Box) -> None:
    user, made = box.add("ann", max_tokens=300)
    assert claims_of(box.negotiate(made.api_key))["grant"]["max_tokens"] == 300
    owner = claims_of(box.negotiate(ACCESS_TOKEN))
    assert owner["grant"]["max_tokens"] == 512
    assert box.day_used(user) == 0
    box.report(owner, 12)
    [row] = box.core.users.ledger(day_of(time.time()), "local")
    assert (row.requests, row.completion_tokens) == (1, 12)


GOOD_REPORT = usage_report(UsageReport("j", "s", "m", "chat", "direct", "ended", 1, 3))


@pytest.mark.parametrize("document", [
    {}, {"jti": "j"}, [], "x", {"reports": []}, {"reports": GOOD_REPORT}, GOOD_REPORT,
    {"reports": [GOOD_REPORT], "more": 1},
    {"reports": [GOOD_REPORT, {**GOOD_REPORT, "phase": "later"}]},
    {"reports": [{**GOOD_REPORT, "prompt_tokens": -1}]},
    {"reports": [{**GOOD_REPORT, "completion_tokens": True}]},
])
def test_a_malformed_usage_report_is_refused(box: Box, document: object) -> None:
    answer = box.control.post(USAGE_PATH, json=document)
    assert answer.status_code == 400 and answer.json()["error"]["reason"] == "bad_usage_report"


def test_one_body_settles_every_report_in_it(box: Box) -> None:
    """The gate coalesces the ends of a moment into one body: each report in it settles its own grant."""
    user, made = box.add("ann", tokens_per_day=1000)
    grants = [claims_of(box.negotiate(made.api_key, max_tokens=100)) for _ in range(3)]
    assert box.day_used(user) == 300
    reports = [UsageReport(claims["jti"], claims["sub"], "smol", "chat", "direct", "ended", 7, used)
               for claims, used in zip(grants, (10, 20, None), strict=True)]
    [body] = usage_batches(reports)
    answer = box.control.post(USAGE_PATH, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 204
    assert box.day_used(user) == 10 + 20 + 100  # the end not seen stays charged in full
    [row] = box.core.users.ledger(day_of(time.time()), user.id)
    assert (row.requests, row.completion_tokens, row.unseen) == (3, 130, 1)


def test_a_user_reads_their_own_usage_and_what_is_left(box: Box) -> None:
    ann, made = box.add("ann", tokens_per_day=100, tokens_per_minute=90)
    _, bob = box.add("bob")
    first = claims_of(box.negotiate(made.api_key, max_tokens=80))
    box.report(first, 25)
    box.report(claims_of(box.negotiate(bob.api_key, max_tokens=10)), 10)
    mine = box.client.get(MY_USAGE_PATH, headers={"Authorization": f"Bearer {made.api_key}"}).json()
    today = day_name(day_of(time.time()))
    assert {key: mine[key] for key in ("sub", "name", "tokens_per_day", "day_used", "day_left", "since")} == {
        "sub": ann.id, "name": "ann", "tokens_per_day": 100, "day_used": 25, "day_left": 75, "since": today}
    assert mine["minute_left"] in (65, 90)  # the minute may have turned since the reservation
    assert [(row["day"], row["completion_tokens"], row["prompt_tokens"]) for row in mine["rows"]] == [(today, 25, 7)]
    theirs = box.client.get(MY_USAGE_PATH, headers={"Authorization": f"Bearer {bob.api_key}"}).json()
    assert (theirs["day_left"], [row["completion_tokens"] for row in theirs["rows"]]) == (None, [10])
    for since in ("nope", "2999-01-01", "1990-01-01"):
        refused = box.client.get(MY_USAGE_PATH, params={"since": since},
                                 headers={"Authorization": f"Bearer {made.api_key}"})
        assert refused.status_code == 400 and refused.json()["error"]["reason"] == "invalid_option"
    assert box.client.get(MY_USAGE_PATH).status_code == 401


def refused_streams(answer: httpx.Response) -> bool:
    return answer.status_code == 429 and answer.json()["error"]["reason"] == "too_many_streams"


def test_the_baseline_serves_under_the_lane_grant_its_client_could_not_use(box: Box) -> None:
    """Dee has `--streams 1` and a grant her lane request never brought to the gate: the baseline is
    refused without it, and serves under it when she hands its token over (the same grant id, so the gate
    spends its one use and its report settles its reservation). Handed over again, its use is spent:
    the baseline reserves anew, refused while the grant's end is not reported, then served."""
    _, dee = box.add("dee", streams=1, max_tokens=40)
    unused = box.negotiate(dee.api_key)
    grant = claims_of(unused)
    assert refused_streams(box.baseline(dee.api_key))
    assert box.baseline(dee.api_key, unused.json()["token"]).status_code == 200
    served = jwt.decode(box.minted[-1], options={"verify_signature": False})
    assert (served["jti"], served["grant"]["max_tokens"]) == (grant["jti"], 40)
    assert served["exp"] <= grant["exp"] and served["grant"]["routes"] == [["POST", "/v1/chat/completions"]]
    assert refused_streams(box.baseline(dee.api_key, unused.json()["token"]))
    box.report(grant, 3)
    assert box.baseline(dee.api_key, unused.json()["token"]).status_code == 200
    assert jwt.decode(box.minted[-1], options={"verify_signature": False})["jti"] != grant["jti"]


def test_only_the_callers_own_live_grant_for_this_route_is_served_under(box: Box) -> None:
    """A forged copy of her grant (signed by another key), another user's grant, her grant for another
    route, and her grant after her logout are no handover: the baseline reserves anew, and she is at her
    `--streams`, so each is refused; nothing reached the gate."""
    _, eve = box.add("eve", streams=2)
    _, fay = box.add("fay", streams=1)
    chat = box.negotiate(eve.api_key)
    responses = box.negotiate(eve.api_key, route="responses")
    claims = claims_of(chat)
    forged = jwt.encode(claims, SigningKey.generate("EdDSA").private_key, algorithm="EdDSA",
                        headers={"kid": jwt.get_unverified_header(chat.json()["token"])["kid"]})
    others = box.negotiate(fay.api_key).json()["token"]
    for token in (forged, others, responses.json()["token"]):
        assert refused_streams(box.baseline(eve.api_key, token))
    box.core.revoke(claims["sub"])
    assert refused_streams(box.baseline(eve.api_key, chat.json()["token"]))
    assert box.minted == []
