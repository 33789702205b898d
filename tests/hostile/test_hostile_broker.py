"""Hostile requests to the broker, on both of its fronts: the standalone app (`broker.app.create_app`, its
own login) and a host app that mounts it (`examples/fastapi-app`, whose `who` is its own session cookie
or HTTP Basic, through `broker.mount.direct_router`). Both run `broker.mount.broker_router`, so each rule
the broker keeps whatever the host's auth is (no credential, a forged one, Origin and `Sec-Fetch-Site`
for an ambient credential, bad options, someone else's conversation, oversize bodies, a smuggled Host)
is asserted on both, with the same answer. A case that only one front has is marked with its front:
the standalone broker's own bearer tokens, its unknown routes; a host's Basic auth, which the broker
must treat as ambient since it cannot see into it."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from example_app import example_app
from fastapi.testclient import TestClient
from health_answers import ready_health
from hostile_support import CHAT, error_body

from broker.app import create_app
from broker.bodies import MAX_CHAT_BODY_BYTES, MAX_SMALL_BODY_BYTES
from broker.core import BrokerCore
from broker.sessions import COOKIE_NAME, AccessTokens
from broker.settings import BrokerSettings
from llama_direct.refusals import (
    BAD_ACCESS_TOKEN,
    BAD_HOST,
    BODY_TOO_LARGE,
    CONVERSATION_NOT_OWNED,
    INVALID_OPTION,
    INVALID_OPTIONS,
    LOGIN_REQUIRED,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    ORIGIN_NOT_ALLOWED,
    UNKNOWN_MODEL,
    UNKNOWN_OPTION,
)
from llama_direct.tokens import verify

ACCESS = "hostile-access-token-0123456789"
BOB = "hostile-bob-token-0123456789abc"
PASSWORDS = {"alice": "hostile-alice-password-0123", "bob": "hostile-bob-password-0123"}
HOST = "box.lan:8000"
OWN_ORIGIN = "http://box.lan:8000"
EVIL = "http://evil.test"
READY = ready_health()
STANDALONE, MOUNTED = "standalone", "mounted"
BOTH = (STANDALONE, MOUNTED)


class GateSocket:
    """The gate's private socket as the broker sees it: `/health`, and a record of anything else."""

    def __init__(self) -> None:
        self.lane: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json=READY)
        self.lane.append(request)
        return httpx.Response(200, text="data: [DONE]\n\n", headers={"content-type": "text/event-stream"})


@dataclass
class Side:
    """One front of the broker, and how a client of it logs in and presents a credential."""

    front: str
    client: TestClient
    core: BrokerCore
    gate: GateSocket
    cookie: str
    """The name of the front's session cookie: the broker's own, or the host's."""
    login: Callable[[], None]
    """Alice gets an ambient credential: a session cookie, which a browser sends on its own."""
    credential: Callable[[str], dict[str, str]]
    """The header a script sets for a user: a bearer token (standalone), HTTP Basic (the host)."""
    secrets: list[str] = field(default_factory=list)


def _settings(tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(
        data_dir=tmp_path / "data", broker_socket=tmp_path / "b.sock", control_socket=tmp_path / "c.sock",
        gate_socket=tmp_path / "g.sock", model="smol", max_tokens_cap=512, rate_per_minute=600, burst=100,
    )


def _standalone(tmp_path: Path, gate: GateSocket) -> Side:
    app = create_app(_settings(tmp_path), ACCESS, gate_transport=httpx.MockTransport(gate.handle))
    core: BrokerCore = app.state.core
    core.access = AccessTokens({ACCESS: "alice", BOB: "bob"})
    client = TestClient(app, base_url=f"http://{HOST}")
    tokens = {"alice": ACCESS, "bob": BOB}

    def login() -> None:
        assert client.get("/?token=" + ACCESS, follow_redirects=False).status_code == 303

    return Side(STANDALONE, client, core, gate, COOKIE_NAME, login,
                lambda user: {"Authorization": f"Bearer {tokens[user]}"}, [ACCESS, BOB])


def _mounted(tmp_path: Path, gate: GateSocket) -> Side:
    """The example host app, on a core as `mounted_core` makes it (no owner's token), with a fake gate."""
    example = example_app()
    core = BrokerCore(_settings(tmp_path), None, gate_transport=httpx.MockTransport(gate.handle))
    users = example.Users(dict(PASSWORDS))
    client = TestClient(example.build(core, users, "http://box.lan:8001/direct"), base_url=f"http://{HOST}")

    def login() -> None:
        form = {"name": "alice", "password": PASSWORDS["alice"]}
        assert client.post("/login", data=form, follow_redirects=False).status_code == 303

    def basic(user: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()}

    return Side(MOUNTED, client, core, gate, example.COOKIE, login, basic, list(PASSWORDS.values()))


@pytest.fixture(params=BOTH)
def side(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Side]:
    monkeypatch.delenv("UNSLOTH_DIRECT_STREAM", raising=False)
    made = (_standalone if request.param == STANDALONE else _mounted)(tmp_path, GateSocket())
    with made.client:
        yield made


def _alice(s: Side) -> dict[str, str]:
    return s.credential("alice")


def _forge_cookie(s: Side, value: str) -> TestClient:
    s.client.cookies.set(s.cookie, value)
    return s.client


def _logged_in(s: Side) -> TestClient:
    s.login()
    return s.client


def _bobs_conversation(s: Side) -> str:
    answer = s.client.post("/direct-stream", headers=s.credential("bob"), json={"resumable": True}).json()
    return str(answer["conversation_id"])


def _replayed_after_logout(s: Side) -> httpx.Response:
    s.login()
    session = s.client.cookies[s.cookie]
    assert s.client.post("/logout", follow_redirects=False).status_code in (200, 303)
    return _forge_cookie(s, session).post("/direct-stream")


def _chunks(size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A body sent chunked, with no length announced: the bound must hold as it arrives."""
    while size > 0:
        yield b"x" * min(size, chunk)
        size -= chunk


@dataclass(frozen=True)
class BrokerCase:
    name: str
    act: Callable[[Side], httpx.Response]
    status: int
    message: str
    fronts: tuple[str, ...] = BOTH


def _case(name: str, act: Callable[[Side], Any], status: int, message: str, *fronts: str) -> BrokerCase:
    return BrokerCase(name, act, status, message, fronts or BOTH)


def _origin(name: str, route: str, headers: dict[str, str], **body: Any) -> BrokerCase:
    """Alice's cookie, sent by a browser on another site's behalf: refused whatever the route."""
    return _case(name, lambda s: _logged_in(s).post(route, headers=headers, **body), 403, ORIGIN_NOT_ALLOWED.message)


BROKER_CASES: list[BrokerCase] = [
    _case("no_credential", lambda s: s.client.post("/direct-stream"), 401, LOGIN_REQUIRED.message),
    _case("no_credential_on_the_baseline", lambda s: s.client.post("/v1/chat/completions", json=CHAT),
          401, LOGIN_REQUIRED.message),
    _case("no_credential_for_the_models", lambda s: s.client.get("/v1/models"), 401, LOGIN_REQUIRED.message),
    _case("no_credential_revoking", lambda s: s.client.post("/direct-stream/revoke"), 401, LOGIN_REQUIRED.message),
    _case("forged_cookie", lambda s: _forge_cookie(s, "forged-session-id").post("/direct-stream"),
          401, LOGIN_REQUIRED.message),
    _case("forged_cookie_on_the_baseline",
          lambda s: _forge_cookie(s, "A" * 43).post("/v1/chat/completions", json=CHAT), 401, LOGIN_REQUIRED.message),
    _case("session_replayed_after_logout", _replayed_after_logout, 401, LOGIN_REQUIRED.message),
    _case("bad_json_body", lambda s: s.client.post("/direct-stream", headers=_alice(s), content=b'{"max_tokens": '),
          400, INVALID_OPTIONS.message),
    _case("json_array_body", lambda s: s.client.post("/direct-stream", headers=_alice(s), content=b"[1]"),
          400, INVALID_OPTIONS.message),
    _case("negative_max_tokens", lambda s: s.client.post("/direct-stream", headers=_alice(s), json={"max_tokens": -1}),
          400, INVALID_OPTION.message),
    _case("boolean_max_tokens",
          lambda s: s.client.post("/direct-stream", headers=_alice(s), json={"max_tokens": True}),
          400, INVALID_OPTION.message),
    # Issue 16: a model may be named now; one the user may not use is still 400 (unknown_model).
    _case("asking_for_another_model",
          lambda s: s.client.post("/direct-stream", headers=_alice(s), json={"model": "a/../x"}),
          400, UNKNOWN_MODEL.message),
    _case("a_model_that_is_not_a_name",
          lambda s: s.client.post("/direct-stream", headers=_alice(s), json={"model": ["smol"]}),
          400, UNKNOWN_MODEL.message),
    _case("an_unknown_option", lambda s: s.client.post("/direct-stream", headers=_alice(s), json={"uses": 5}),
          400, UNKNOWN_OPTION.message),
    _case("repeated_query_option",
          lambda s: s.client.get("/direct-stream?max_tokens=1&max_tokens=99999", headers=_alice(s)),
          400, INVALID_OPTIONS.text("repeated")),
    _case("resume_of_someone_elses_conversation",
          lambda s: s.client.post("/direct-stream", headers=_alice(s), json={"resume": _bobs_conversation(s)}),
          403, CONVERSATION_NOT_OWNED.message),
    _case("cancel_of_someone_elses_conversation",
          lambda s: s.client.post("/direct-stream", headers=_alice(s), json={"cancel": _bobs_conversation(s)}),
          403, CONVERSATION_NOT_OWNED.message),
    _case("resume_of_a_path_like_id",
          lambda s: s.client.post("/direct-stream", headers=_alice(s), json={"resume": "../x"}),
          400, INVALID_OPTION.text("conversation")),
    _case("oversize_negotiation_body",
          lambda s: s.client.post("/direct-stream", headers=_alice(s), content=b" " * (MAX_SMALL_BODY_BYTES + 1)),
          413, BODY_TOO_LARGE.message),
    _case("oversize_negotiation_body_chunked",
          lambda s: s.client.post("/direct-stream", headers=_alice(s), content=_chunks(MAX_SMALL_BODY_BYTES + 1, 4096)),
          413, BODY_TOO_LARGE.message),
    _case("oversize_baseline_body_chunked",
          lambda s: s.client.post("/v1/chat/completions", headers=_alice(s), content=_chunks(MAX_CHAT_BODY_BYTES + 1)),
          413, BODY_TOO_LARGE.message),
    _origin("foreign_origin_with_a_cookie", "/direct-stream", {"Origin": EVIL}),
    _origin("null_origin_with_a_cookie", "/direct-stream", {"Origin": "null"}),
    _origin("lookalike_origin_with_a_cookie", "/direct-stream", {"Origin": OWN_ORIGIN + ".evil.test"}),
    _origin("own_host_on_another_port_with_a_cookie", "/direct-stream", {"Origin": "http://box.lan:9999"}),
    _origin("cross_site_fetch_with_a_cookie", "/direct-stream", {"Sec-Fetch-Site": "cross-site"}),
    _origin("same_site_sibling_fetch_with_a_cookie", "/direct-stream", {"Sec-Fetch-Site": "same-site"}),
    _origin("foreign_origin_on_the_baseline_with_a_cookie", "/v1/chat/completions", {"Origin": EVIL}, json=CHAT),
    _origin("cross_site_fetch_on_the_baseline_with_a_cookie", "/v1/chat/completions",
            {"Sec-Fetch-Site": "cross-site"}, json=CHAT),
    _origin("foreign_origin_revoking_with_a_cookie", "/direct-stream/revoke", {"Origin": EVIL}),
    _origin("cross_site_fetch_revoking_with_a_cookie", "/direct-stream/revoke", {"Sec-Fetch-Site": "cross-site"}),
    _case("host_header_injection",
          lambda s: s.client.post("/direct-stream", headers={**_alice(s), "Host": "evil.test/x?y=@box.lan"}),
          400, BAD_HOST.message),
    # The standalone broker's own credentials: a bearer token it checks itself, first, and refuses when wrong.
    _case("wrong_access_token", lambda s: s.client.post("/direct-stream", headers={"Authorization": "Bearer wrong"}),
          401, BAD_ACCESS_TOKEN.message, STANDALONE),
    _case("wrong_access_token_beside_a_cookie",
          lambda s: _logged_in(s).post("/direct-stream", headers={"Authorization": "Bearer wrong-token"}),
          401, BAD_ACCESS_TOKEN.message, STANDALONE),
    # The standalone broker's own paths: on a host, an unknown path or method is the host's to answer.
    _case("unknown_route", lambda s: s.client.get("/v1/nothing", headers=_alice(s)),
          404, NOT_FOUND.text("app"), STANDALONE),
    _case("unknown_method_on_the_negotiation", lambda s: s.client.delete("/direct-stream", headers=_alice(s)),
          405, METHOD_NOT_ALLOWED.message, STANDALONE),
    # A host's users: its `who` says no one, or names a user by a credential the broker cannot see into
    # (HTTP Basic here), which a browser may send on its own: the broker checks the origin all the same.
    _case("wrong_basic_password",
          lambda s: s.client.post("/direct-stream", headers={"Authorization": "Basic " + base64.b64encode(
              b"alice:wrong").decode()}), 401, LOGIN_REQUIRED.message, MOUNTED),
    _case("foreign_origin_with_http_basic",
          lambda s: s.client.post("/direct-stream", headers={**_alice(s), "Origin": EVIL}),
          403, ORIGIN_NOT_ALLOWED.message, MOUNTED),
    _case("cross_site_fetch_on_the_baseline_with_http_basic",
          lambda s: s.client.post("/v1/chat/completions", headers={**_alice(s), "Sec-Fetch-Site": "cross-site"},
                                  json=CHAT), 403, ORIGIN_NOT_ALLOWED.message, MOUNTED),
]
PARAMS = [pytest.param(front, case, id=f"{front}-{case.name}") for case in BROKER_CASES for front in case.fronts]


@pytest.mark.parametrize(("side", "case"), PARAMS, indirect=["side"])
def test_hostile_negotiation_is_refused(side: Side, case: BrokerCase) -> None:
    answer = case.act(side)
    assert (answer.status_code, answer.json()) == (case.status, error_body(case.status, case.message))
    assert answer.headers["cache-control"] == "no-store"
    assert "eyJ" not in answer.text and not any(secret in answer.text for secret in side.secrets)
    assert side.gate.lane == [], "a refused request went on to the gate's lane"


def test_both_fronts_run_every_shared_case_and_the_names_are_unique() -> None:
    names = [case.name for case in BROKER_CASES]
    assert len(set(names)) == len(names)
    shared = [case for case in BROKER_CASES if case.fronts == BOTH]
    assert len(shared) >= 30


def test_the_apps_own_origin_is_granted_so_the_refusals_above_mean_something(side: Side) -> None:
    """The control: Alice's cookie from the app's own page, by Origin or by `Sec-Fetch-Site`, gets a grant."""
    client = _logged_in(side)
    for headers in ({"Origin": OWN_ORIGIN}, {"Sec-Fetch-Site": "same-origin"}):
        answer = client.post("/direct-stream", headers=headers, json={})
        assert answer.status_code == 200, answer.text
        assert answer.json()["supported"] is True
    assert client.post("/direct-stream/revoke", headers={"Origin": OWN_ORIGIN}).status_code == 200


def test_widening_max_tokens_is_narrowed_to_the_cap(side: Side) -> None:
    core = side.core
    answer = side.client.post("/direct-stream", headers=_alice(side), json={"max_tokens": 10**9})
    assert answer.status_code == 200
    body = answer.json()
    assert body["grant"]["max_tokens"] == 512
    now = time.time()
    verified = verify(body["token"], keys=core.keyring.public_keyset(now), audience=core.ids.gate_id,
                      issuer=core.ids.broker_id, now=now)
    assert verified.grant.max_tokens == 512
    assert json.loads(json.dumps(verified.grant.to_claim())) == body["grant"]
    assert side.gate.lane == []
