"""The TypeScript clients' wire types (`frontend/src/documents.ts`) are the contract's, as generated,
and each client language has one reader of the negotiation answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from generated_files import load_script

from llama_direct.documents import parse_negotiation

ROOT = Path(__file__).resolve().parents[2]


def test_frontend_documents_ts_is_generated_from_the_contract() -> None:
    module = load_script("documents_ts")
    assert module.TARGET.read_text() == module.render(), "run: .venv/bin/python scripts/documents_ts.py"


def test_an_optional_field_is_optional_in_typescript() -> None:
    assert "  progress?: number;" in load_script("documents_ts").render()


def test_the_negotiation_answer_is_read_in_one_place_per_language() -> None:
    """No client reads `supported`/`token` off a raw answer by itself: each calls its language's reader."""
    for path in ("frontend/src/chat-run.ts", "frontend/src/direct_fetch.ts"):
        text = (ROOT / path).read_text()
        assert "parseNegotiation" in text and "answer.supported === true" not in text, path
    sdk = (ROOT / "llama_direct" / "sdk.py").read_text()
    assert "parse_negotiation(" in sdk and '.get("supported")' not in sdk


GRANTED = {"supported": True, "route": "chat", "url": "http://box/direct/", "token": "t", "expires_at": 30,
           "ttl_seconds": 30, "model": "m", "conversation_id": None, "scope": "chat", "grant": {"model": "m"},
           "fallback_url": "/v1/x"}


class TestParseNegotiation:
    def test_a_grant_comes_back_typed_without_the_trailing_slash(self) -> None:
        assert parse_negotiation(json.dumps(GRANTED).encode()) == {**GRANTED, "url": "http://box/direct"}

    def test_unsupported(self) -> None:
        body = {"supported": False, "route": "chat", "reason": "disabled", "message": "off", "fallback_url": "/v1/x"}
        assert parse_negotiation(json.dumps(body).encode()) == body

    @pytest.mark.parametrize("field", ["url", "token"])
    def test_a_grant_without_a_string_url_or_token_is_unsupported(self, field: str) -> None:
        answer = parse_negotiation(json.dumps({**GRANTED, field: 7}).encode())
        assert answer is not None and answer["supported"] is False
        assert answer["fallback_url"] == "/v1/x"

    @pytest.mark.parametrize("body", [b"", b"[1]", b"{not json", b"\xff"])
    def test_not_an_object_is_none(self, body: bytes) -> None:
        assert parse_negotiation(body) is None

    def test_odd_optional_fields_get_their_empty_values(self) -> None:
        answer = parse_negotiation(json.dumps({**GRANTED, "conversation_id": 5, "expires_at": True,
                                               "grant": [], "fallback_url": None}).encode())
        assert answer is not None and answer["supported"] is True
        assert (answer["conversation_id"], answer["expires_at"], answer["grant"], answer["fallback_url"]) == (
            None, 0, {}, "")
