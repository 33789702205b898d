"""The refusal catalogue: its codes, statuses and wordings, the token refusals' classes, and the catalogue
seen from its two readers (the error body and the page's `errors.ts`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llama_direct import refusals
from llama_direct.refusals import Refusal, RequestRefusal, TokenRefusal

ERRORS_TS = Path(__file__).resolve().parents[2] / "frontend" / "src" / "errors.ts"


def test_every_body_names_its_code_beside_llama_servers_status() -> None:
    plain = [r for r in refusals.CATALOGUE.values() if "{" not in r.message.replace("{{", "")]
    assert len(plain) > 50
    for reason in plain:
        refusal = refusals.FrameworkError(reason)
        error = json.loads(refusal.to_body())["error"]
        assert error == {"message": refusal.message, "type": refusals.error_type(reason.status),
                         "code": reason.status, "reason": reason.code}


def test_the_page_maps_only_codes_the_catalogue_has() -> None:
    text = ERRORS_TS.read_text()
    lists = re.findall(r"const (?:TOKEN|IMAGE|UNAVAILABLE)_REASONS = \[(.*?)\] as const;", text, re.S)
    table = re.search(r"export const REASONS.*?\n\]\);", text, re.S)
    assert len(lists) == 3 and table is not None
    named = {code for block in lists for code in re.findall(r'"(\w+)"', block)}
    named |= set(re.findall(r'^\s+\["(\w+)", "\w+"\],$', table.group(0), re.M))
    assert named, "no code found in errors.ts"
    assert named <= set(refusals.CATALOGUE), sorted(named - set(refusals.CATALOGUE))
    assert {code for code, r in refusals.CATALOGUE.items() if r.status == 401} <= named


TOKEN_REFUSALS = {
    refusals.MissingToken: "missing_token",
    refusals.MalformedToken: "malformed_token",
    refusals.AlgorithmNotAllowed: "algorithm_not_allowed",
    refusals.UnknownKey: "unknown_key",
    refusals.BadSignature: "bad_signature",
    refusals.TokenExpired: "token_expired",
    refusals.TokenNotYetValid: "token_not_yet_valid",
    refusals.WrongAudience: "wrong_audience",
    refusals.WrongIssuer: "wrong_issuer",
    refusals.MissingClaim: "missing_claim",
    refusals.TokenSpent: "token_spent",
    refusals.TokenRevoked: "token_revoked",
    refusals.IssuedBeforeGateStart: "token_predates_gate",
}


@pytest.mark.parametrize(("cls", "code"), TOKEN_REFUSALS.items())
def test_token_refusals_render_as_llama_server_401s(cls: type[TokenRefusal], code: str) -> None:
    refusal = cls()
    assert (refusal.status, refusal.code) == (401, code)
    assert json.loads(refusal.to_body()) == {
        "error": {"message": refusal.message, "type": "authentication_error", "code": 401, "reason": code}
    }
    assert str(refusal) == refusal.message
    assert refusal.message.endswith(".")


def test_every_token_refusal_has_its_own_code_and_message() -> None:
    assert len({cls.message for cls in TOKEN_REFUSALS}) == len(TOKEN_REFUSALS)
    subclasses = {cls for cls in vars(refusals).values()
                  if isinstance(cls, type) and issubclass(cls, TokenRefusal) and cls is not TokenRefusal}
    assert subclasses == set(TOKEN_REFUSALS)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [(refusals.BAD_QUERY, "invalid_request_error"), (refusals.SCOPE_MISMATCH, "permission_error"),
     (refusals.NO_SUCH_ROUTE, "not_found_error"), (refusals.METHOD_NOT_ALLOWED, "invalid_request_error"),
     (refusals.BODY_TOO_LARGE, "invalid_request_error"), (refusals.UNSUPPORTED_MEDIA_TYPE, "invalid_request_error")],
)
def test_request_refusals_carry_their_reasons_status_and_code(reason: refusals.Reason, kind: str) -> None:
    refusal = RequestRefusal(reason)
    assert (refusal.status, refusal.code, refusal.message) == (reason.status, reason.code, reason.message)
    assert refusal.to_body() == b'{"error":{"message":"%s","type":"%s","code":%d,"reason":"%s"}}' % (
        reason.message.encode(), kind.encode(), reason.status, reason.code.encode()
    )
    assert isinstance(refusal, Refusal)
    assert not isinstance(refusal, TokenRefusal)


def test_a_variant_is_another_wording_of_the_same_code() -> None:
    refusal = RequestRefusal(refusals.BAD_QUERY, "only", names="conv_id and from")
    assert (refusal.status, refusal.code) == (400, "bad_query")
    assert refusal.message == "This route takes only conv_id and from in its query."
    with pytest.raises(KeyError):
        RequestRefusal(refusals.BAD_QUERY, "no_such_variant")


@pytest.mark.parametrize("reason", [refusals.INTERNAL_ERROR, refusals.UPSTREAM_UNAVAILABLE])
def test_a_request_refusal_is_a_4xx(reason: refusals.Reason) -> None:
    with pytest.raises(ValueError, match="4xx"):
        RequestRefusal(reason)


def test_each_code_is_defined_once_with_a_safe_fixed_message() -> None:
    assert {reason.code for reason in refusals.CATALOGUE.values()} == set(refusals.CATALOGUE)
    for reason in refusals.CATALOGUE.values():
        assert 400 <= reason.status <= 599
        for template in (reason.message, *reason.variants.values()):
            assert template.endswith(".") and "Traceback" not in template
    with pytest.raises(ValueError, match="defined twice"):
        refusals._reason(400, "bad_query", "Again.")


def test_the_bases_cannot_be_raised_themselves() -> None:
    for base in (Refusal, TokenRefusal, refusals.ServiceRefusal):
        with pytest.raises(TypeError, match="base class"):
            base()
