from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from broker.conversations import Conversations
from broker.gate_health import GATE_DOWN, GateHealth
from broker.issuer import Issuer
from broker.models import allowed_models
from broker.negotiation import negotiate
from broker.negotiation_options import Options
from broker.policy import Policy, split_host
from broker.settings import BrokerSettings
from broker.signing_keys import SigningKey
from llama_direct.keys import PublicKeySet
from llama_direct.lanes import CHAT, LANE_ROUTES, RESUME, ROUTES
from llama_direct.refusals import (
    BAD_HOST,
    CONFLICTING_OPTIONS,
    CONVERSATION_NOT_OWNED,
    INVALID_OPTION,
    INVALID_OPTIONS,
    UNKNOWN_MODEL,
    UNKNOWN_OPTION,
    UNKNOWN_ROUTE,
    RequestRefusal,
)
from llama_direct.tokens import verify

NOW = 1_750_000_000.25
READY = GateHealth(up=True, model_ready=True)
POLICY = Policy(model="smol", max_tokens_cap=2048, ttl=30)
KEY = SigningKey.generate("EdDSA")
ISSUER = Issuer(key=KEY, issuer="broker-1", audience="gate-1")
KEYS = PublicKeySet({KEY.kid: (KEY.algorithm, KEY.public_key)})


DEFAULT_OPTIONS = Options()


def _negotiate(options: Options = DEFAULT_OPTIONS, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "user": "alice",
        "origin": "http://localhost:8000",
        "url": "http://localhost:8000/direct",
        "policy": POLICY,
        "health": READY,
        "enabled": True,
        "conversations": Conversations(),
        "issuer": ISSUER,
        "now": NOW,
    }
    arguments.update(overrides)
    policy, health = arguments["policy"], arguments["health"]
    arguments.setdefault("allowed", allowed_models(policy.models, policy.model, health.models))
    return negotiate(options, **arguments)


def _refusal(excinfo: pytest.ExceptionInfo[RequestRefusal]) -> tuple[int, str]:
    return excinfo.value.status, excinfo.value.message


class TestOptionsFromBody:
    @pytest.mark.parametrize("body", [b"", b"  ", b"{}"])
    def test_nothing_asked_is_the_default(self, body: bytes) -> None:
        assert Options.from_body(body) == Options()

    def test_every_field(self) -> None:
        assert Options.from_body(b'{"max_tokens": 64, "resumable": true}') == Options(max_tokens=64, resumable=True)
        assert Options.from_body(b'{"resume": "abc_-1"}') == Options(resume="abc_-1")
        assert Options.from_body(b'{"cancel": "abc"}') == Options(cancel="abc")
        assert Options.from_body(b'{"model": "smol"}') == Options(model="smol")

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"[1]", INVALID_OPTIONS.message),
            (b"{not json", INVALID_OPTIONS.message),
            (b'"text"', INVALID_OPTIONS.message),
            (b'{"temperature": 0.5}', UNKNOWN_OPTION.message),
            (b'{"model": 7}', UNKNOWN_MODEL.message),
            (b'{"autoload": "yes"}', INVALID_OPTION.text("autoload")),
            (b'{"max_tokens": 10, "uses": 5}', UNKNOWN_OPTION.message),
            (b'{"max_tokens": "10"}', INVALID_OPTION.message),
            (b'{"max_tokens": 1.5}', INVALID_OPTION.message),
            (b'{"max_tokens": true}', INVALID_OPTION.message),
            (b'{"max_tokens": 0}', INVALID_OPTION.message),
            (b'{"max_tokens": -5}', INVALID_OPTION.message),
            (b'{"resumable": "yes"}', INVALID_OPTION.text("resumable")),
            (b'{"resumable": 1}', INVALID_OPTION.text("resumable")),
            (b'{"resume": 5}', INVALID_OPTION.text("conversation")),
            (b'{"resume": ""}', INVALID_OPTION.text("conversation")),
            (b'{"cancel": "a/b"}', INVALID_OPTION.text("conversation")),
            (b'{"cancel": "x\\r\\nX-Evil: 1"}', INVALID_OPTION.text("conversation")),
            (b'{"resume": "a", "cancel": "b"}', CONFLICTING_OPTIONS.message),
        ],
    )
    def test_bad_bodies_are_400_with_a_fixed_message(self, body: bytes, message: str) -> None:
        with pytest.raises(RequestRefusal) as excinfo:
            Options.from_body(body)
        assert _refusal(excinfo) == (400, message)

    def test_a_huge_body_is_refused_unparsed(self) -> None:
        with pytest.raises(RequestRefusal) as excinfo:
            Options.from_body(b'{"max_tokens": 1' + b" " * 5000 + b"}")
        assert _refusal(excinfo) == (400, INVALID_OPTIONS.message)


class TestOptionsFromQuery:
    def test_strings_become_typed_fields(self) -> None:
        items = [("max_tokens", "64"), ("resumable", "true")]
        assert Options.from_query(items) == Options(max_tokens=64, resumable=True)
        assert Options.from_query([("resumable", "0")]) == Options(resumable=False)
        assert Options.from_query([("resume", "abc")]) == Options(resume="abc")
        assert Options.from_query([]) == Options()

    @pytest.mark.parametrize(
        ("items", "message"),
        [
            ([("max_tokens", "ten")], INVALID_OPTION.message),
            ([("max_tokens", "-1")], INVALID_OPTION.message),
            ([("max_tokens", "0")], INVALID_OPTION.message),
            ([("max_tokens", "١٢")], INVALID_OPTION.message),
            ([("resumable", "maybe")], INVALID_OPTION.text("resumable")),
            ([("token", "x")], UNKNOWN_OPTION.message),
            ([("max_tokens", "5"), ("max_tokens", "9999")], INVALID_OPTIONS.text("repeated")),
            ([("resume", "a"), ("cancel", "b")], CONFLICTING_OPTIONS.message),
        ],
    )
    def test_bad_queries_are_400(self, items: list[tuple[str, str]], message: str) -> None:
        with pytest.raises(RequestRefusal) as excinfo:
            Options.from_query(items)
        assert _refusal(excinfo) == (400, message)


class TestSupported:
    def test_a_chat_answer_has_exactly_the_documented_fields(self) -> None:
        answer = _negotiate()
        assert set(answer) == {
            "supported", "route", "url", "token", "expires_at", "ttl_seconds", "model",
            "conversation_id", "scope", "grant", "fallback_url",
        }
        assert answer["supported"] is True
        assert answer["url"] == "http://localhost:8000/direct"
        assert answer["expires_at"] == 1_750_000_030
        assert answer["ttl_seconds"] == 30
        assert answer["model"] == "smol"
        assert answer["conversation_id"] is None
        assert answer["scope"] == "chat"
        assert answer["fallback_url"] == "/v1/chat/completions"
        assert answer["grant"] == {
            "routes": [["POST", "/v1/chat/completions"]],
            "model": "smol",
            "max_tokens": 2048,
            "uses": 1,
            "origin": "http://localhost:8000",
        }

    def test_the_token_verifies_and_carries_the_grant(self) -> None:
        answer = _negotiate()
        claims = verify(answer["token"], keys=KEYS, audience="gate-1", issuer="broker-1", now=NOW)
        assert (claims.sub, claims.scope, claims.exp) == ("alice", "chat", answer["expires_at"])
        assert claims.grant.to_claim() == answer["grant"]

    def test_no_origin_means_a_grant_without_one(self) -> None:
        assert "origin" not in _negotiate(origin=None)["grant"]

    def test_the_served_model_may_be_named(self) -> None:
        assert _negotiate(Options(model="smol"))["grant"]["model"] == "smol"

    def test_another_model_is_not_found_even_when_the_lane_is_off(self) -> None:
        for enabled in (True, False):
            with pytest.raises(RequestRefusal) as excinfo:
                _negotiate(Options(model="other"), enabled=enabled)
            assert (excinfo.value.status, excinfo.value.code) == (400, "unknown_model")
            assert excinfo.value.message == UNKNOWN_MODEL.message

    def test_a_smaller_max_tokens_narrows_the_cap(self) -> None:
        assert _negotiate(Options(max_tokens=64))["grant"]["max_tokens"] == 64

    def test_a_larger_max_tokens_is_clamped_to_the_cap(self) -> None:
        assert _negotiate(Options(max_tokens=1_000_000))["grant"]["max_tokens"] == 2048

    def test_a_resumable_chat_gets_a_fresh_conversation_owned_by_the_user(self) -> None:
        conversations = Conversations()
        first = _negotiate(Options(resumable=True), conversations=conversations)
        second = _negotiate(Options(resumable=True), conversations=conversations)
        assert first["conversation_id"] != second["conversation_id"]
        assert first["grant"]["conversation_id"] == first["conversation_id"]
        assert conversations.owner(first["conversation_id"], NOW) == "alice"

    @pytest.mark.parametrize(("field", "method"), [("resume", "GET"), ("cancel", "DELETE")])
    def test_resume_and_cancel_of_ones_own_conversation(self, field: str, method: str) -> None:
        conversations = Conversations()
        conversation_id = conversations.open("alice", NOW)
        answer = _negotiate(Options(**{field: conversation_id}), conversations=conversations)
        assert answer["scope"] == field
        assert answer["conversation_id"] == conversation_id
        assert answer["grant"]["routes"] == [[method, "/v1/stream"]]
        assert answer["grant"]["conversation_id"] == conversation_id

    @pytest.mark.parametrize("field", ["resume", "cancel"])
    def test_another_users_conversation_is_refused(self, field: str) -> None:
        conversations = Conversations()
        conversation_id = conversations.open("bob", NOW)
        with pytest.raises(RequestRefusal) as excinfo:
            _negotiate(Options(**{field: conversation_id}), conversations=conversations)
        assert _refusal(excinfo) == (403, CONVERSATION_NOT_OWNED.message)

    def test_an_unknown_conversation_gets_the_same_refusal(self) -> None:
        with pytest.raises(RequestRefusal) as excinfo:
            _negotiate(Options(resume="never-made"))
        assert _refusal(excinfo) == (403, CONVERSATION_NOT_OWNED.message)


class TestUnsupported:
    @pytest.mark.parametrize(
        ("enabled", "health", "reason", "message"),
        [
            (False, READY, "disabled", "The direct lane is turned off on this server."),
            (True, GATE_DOWN, "gate_down", "The gate is not answering right now."),
            (True, GateHealth(up=True, model_ready=False), "model_loading", "The model is still loading."),
            (False, GATE_DOWN, "disabled", "The direct lane is turned off on this server."),
        ],
    )
    def test_reasons(self, enabled: bool, health: GateHealth, reason: str, message: str) -> None:
        assert _negotiate(enabled=enabled, health=health) == {
            "supported": False,
            "route": "chat",
            "reason": reason,
            "message": message,
            "fallback_url": "/v1/chat/completions",
        }

    def test_an_unsupported_answer_opens_no_conversation(self) -> None:
        conversations = Conversations()
        _negotiate(Options(resumable=True), enabled=False, conversations=conversations)
        assert len(conversations) == 0


class TestUrls:
    @pytest.mark.parametrize(
        ("scheme", "host", "url"),
        [
            ("http", "localhost:8000", "http://localhost:8000/direct"),
            ("https", "chat.example.com", "https://chat.example.com/direct"),
            ("http", "192.168.1.20:8000", "http://192.168.1.20:8000/direct"),
            ("http", "[::1]:8000", "http://[::1]:8000/direct"),
        ],
    )
    def test_the_lane_is_on_the_requests_own_host(self, scheme: str, host: str, url: str) -> None:
        assert POLICY.lane_url(scheme, host) == url

    @pytest.mark.parametrize(
        ("host", "url"),
        [
            ("box.lan:8000", "http://box.lan:9443/direct"),
            ("box.lan", "http://box.lan:9443/direct"),
            ("[::1]:8000", "http://[::1]:9443/direct"),
        ],
    )
    def test_two_port_mode_swaps_the_port(self, host: str, url: str) -> None:
        policy = Policy(model="smol", max_tokens_cap=10, ttl=30, gate_port=9443)
        assert policy.lane_url("http", host) == url

    def test_public_url_wins_and_its_prefix_reaches_the_fallback(self, tmp_path: Path) -> None:
        settings = BrokerSettings(
            data_dir=tmp_path, broker_socket=tmp_path / "b", control_socket=tmp_path / "c",
            gate_socket=tmp_path / "g", model="smol", public_url="https://proxy.example/llm/", gate_port=9443,
        )
        policy = Policy.from_settings(settings)
        assert policy.lane_url("http", "127.0.0.1:8000") == "https://proxy.example/llm/direct"
        assert policy.fallback_for(CHAT) == policy.fallback_for(RESUME) == "/llm/v1/chat/completions"
        assert policy.app_origin("http", "127.0.0.1:8000") == "https://proxy.example"

    @pytest.mark.parametrize(
        "host", ["", "evil.com/path", "a@b.com", "host:80:80", "host name", "ex.com\r\nX: 1", "[zz]", "h:port"]
    )
    def test_a_host_that_could_smuggle_anything_is_refused(self, host: str) -> None:
        with pytest.raises(RequestRefusal) as excinfo:
            POLICY.lane_url("http", host)
        assert _refusal(excinfo) == (400, BAD_HOST.message)

    def test_split_host(self) -> None:
        assert split_host("a.b:81") == ("a.b", 81)
        assert split_host("[::1]") == ("[::1]", None)


class TestConversations:
    def test_ownership_is_forgotten_after_its_ttl(self) -> None:
        conversations = Conversations(ttl=10)
        conversation_id = conversations.open("alice", 100.0)
        assert conversations.owner(conversation_id, 109.9) == "alice"
        assert conversations.owner(conversation_id, 110.0) is None
        conversations.open("alice", 111.0)
        assert len(conversations) == 1

    def test_the_book_is_bounded(self) -> None:
        conversations = Conversations(max_entries=2)
        first = conversations.open("alice", 0.0)
        conversations.open("alice", 0.0)
        conversations.open("alice", 0.0)
        assert conversations.owner(first, 0.0) is None
        assert len(conversations) == 2


class TestRoutes:
    """Negotiation grants any registry entry by its name, with no code of its own for any route."""

    @pytest.mark.parametrize("route", [r for r in LANE_ROUTES if not r.continues_conversation], ids=lambda r: r.name)
    def test_each_route_is_granted_by_its_name(self, route: Any) -> None:
        answer = _negotiate(Options.from_body(json.dumps({"route": route.name}).encode()))
        assert answer["supported"] is True and answer["route"] == route.name
        assert answer["scope"] == route.scope
        assert answer["grant"]["routes"] == [[route.method, route.path]]
        claims = verify(answer["token"], keys=KEYS, audience="gate-1", issuer="broker-1", now=NOW)
        assert claims.grant.routes == (route.key,)
        assert answer["fallback_url"] == (route.path if route.body is not None else CHAT.path)

    def test_no_route_is_chat(self) -> None:
        assert Options().lane is CHAT
        assert _negotiate()["route"] == "chat"

    @pytest.mark.parametrize("field", ["resume", "cancel"])
    def test_resume_and_cancel_name_their_routes_with_or_without_route(self, field: str) -> None:
        conversations = Conversations()
        conversation_id = conversations.open("alice", NOW)
        for options in (Options(**{field: conversation_id}), Options(**{field: conversation_id}, route=field)):
            answer = _negotiate(options, conversations=conversations)
            assert answer["route"] == field and answer["grant"]["routes"] == [list(ROUTES[field].key)]

    @pytest.mark.parametrize("value", ["nope", "", "CHAT", 7, None, ["chat"]])
    def test_an_unknown_route_is_400_unknown_route(self, value: object) -> None:
        body = json.dumps({"route": value}).encode()
        if value is None:  # null is "not named": chat
            assert Options.from_body(body).lane is CHAT
            return
        with pytest.raises(RequestRefusal) as excinfo:
            Options.from_body(body)
        assert (excinfo.value.status, excinfo.value.code) == (400, UNKNOWN_ROUTE.code)

    def test_the_query_names_the_route_too(self) -> None:
        assert Options.from_query([("route", "chat")]).lane is CHAT
        with pytest.raises(RequestRefusal) as excinfo:
            Options.from_query([("route", "nope")])
        assert excinfo.value.code == UNKNOWN_ROUTE.code

    @pytest.mark.parametrize("body", [
        {"route": "resume"}, {"route": "cancel"}, {"route": "chat", "resume": "abc"},
        {"route": "resume", "cancel": "abc"}, {"route": "cancel", "resume": "abc"},
    ])
    def test_a_route_that_disagrees_with_resume_or_cancel_is_400(self, body: dict[str, str]) -> None:
        with pytest.raises(RequestRefusal) as excinfo:
            Options.from_body(json.dumps(body).encode())
        assert excinfo.value.code == "conflicting_options"

    def test_an_unsupported_answer_names_the_route(self) -> None:
        assert _negotiate(Options(route="chat"), enabled=False)["route"] == "chat"


def test_negotiation_p50_in_process() -> None:
    """A benchmark, not a timed test: it prints the figure and asserts only that answers were made."""
    conversations = Conversations()
    samples = []
    for _ in range(300):
        started = time.perf_counter()
        answer = _negotiate(Options(max_tokens=256), conversations=conversations)
        json.dumps(answer)
        samples.append(time.perf_counter() - started)
    assert answer["supported"] is True
    print(f"\nnegotiate() p50 = {statistics.median(samples) * 1e6:.0f} µs over {len(samples)} runs")
