"""Keys bound to issuers: a key pulled from broker B's JWKS verifies only tokens whose `iss` is B."""

from __future__ import annotations

from dataclasses import replace

import pytest

from broker.signing_keys import SigningKey
from llama_direct.keys import PublicKeySet, TrustedKeys
from llama_direct.refusals import AlgorithmNotAllowed, BadSignature, UnknownKey, WrongIssuer
from llama_direct.tokens import Grant, mint, verify

NOW = 1_700_000_000.0
GRANT = Grant(routes=(("POST", "/v1/chat/completions"),), model="m", max_tokens=8)
ACCEPTED = ("broker-a", "broker-b", "broker-c")
KEY_A = SigningKey.generate("EdDSA")
KEY_B = SigningKey.generate("ES256")


def _set(key: SigningKey, issuers: tuple[str, ...] | None) -> PublicKeySet:
    return PublicKeySet({key.kid: (key.algorithm, key.public_key)}).bound_to(issuers)


def _token(key: SigningKey, issuer: str) -> str:
    return mint(key, issuer=issuer, audience="fleet", subject="u", scope="chat", grant=GRANT, now=NOW).token


def _verify(token: str, keys: TrustedKeys) -> str:
    return verify(token, keys=keys, audience="fleet", issuer=ACCEPTED, now=NOW).iss


def test_a_pulled_key_signs_only_for_its_own_issuer() -> None:
    # A's own broker: every accepted issuer without a JWKS of its own; B: pulled from B's URL.
    keys = TrustedKeys.of([_set(KEY_A, ("broker-a", "broker-c")), _set(KEY_B, ("broker-b",))])
    assert _verify(_token(KEY_B, "broker-b"), keys) == "broker-b"
    assert _verify(_token(KEY_A, "broker-c"), keys) == "broker-c"
    for issuer in ("broker-a", "broker-c"):
        with pytest.raises(WrongIssuer):
            _verify(_token(KEY_B, issuer), keys)
    with pytest.raises(WrongIssuer):
        _verify(_token(KEY_A, "broker-b"), keys)
    with pytest.raises(WrongIssuer):  # still only the accepted issuers, whatever the binding
        verify(_token(KEY_B, "broker-z"), keys=keys, audience="fleet", issuer=ACCEPTED, now=NOW)


def test_an_unbound_set_signs_for_any_accepted_issuer_as_before() -> None:
    keys = TrustedKeys.of([_set(KEY_A, None)])
    for issuer in ACCEPTED:
        assert _verify(_token(KEY_A, issuer), keys) == issuer


def test_two_issuers_publishing_one_kid_for_different_keys_cannot_sign_for_each_other() -> None:
    evil = replace(SigningKey.generate("ES256"), kid=KEY_B.kid)  # C's key, under B's kid
    keys = TrustedKeys.of([_set(KEY_B, ("broker-b",)), _set(evil, ("broker-c",))])
    assert len(keys.checks[KEY_B.kid]) == 2
    assert _verify(_token(evil, "broker-c"), keys) == "broker-c"
    assert _verify(_token(KEY_B, "broker-b"), keys) == "broker-b"
    with pytest.raises(WrongIssuer):
        _verify(_token(evil, "broker-b"), keys)
    with pytest.raises(WrongIssuer):
        _verify(_token(KEY_B, "broker-c"), keys)
    stranger = replace(SigningKey.generate("ES256"), kid=KEY_B.kid)
    with pytest.raises(BadSignature):
        _verify(_token(stranger, "broker-b"), keys)


def test_one_shared_key_published_by_two_issuers_is_checked_once_for_both() -> None:
    keys = TrustedKeys.of([_set(KEY_A, ("broker-a",)), _set(KEY_A, ("broker-b",))])
    (candidate,) = keys.checks[KEY_A.kid]
    assert candidate[2] == frozenset({"broker-a", "broker-b"})
    assert _verify(_token(KEY_A, "broker-b"), keys) == "broker-b"
    with pytest.raises(WrongIssuer):
        _verify(_token(KEY_A, "broker-c"), keys)
    unbound = TrustedKeys.of([_set(KEY_A, None), _set(KEY_A, ("broker-b",))])
    assert unbound.checks[KEY_A.kid][0][2] is None


def test_a_kid_with_the_wrong_algorithm_or_none_at_all_is_refused_before_any_signature() -> None:
    other = replace(SigningKey.generate("EdDSA"), kid=KEY_B.kid)
    keys = TrustedKeys.of([_set(other, ("broker-b",))])
    with pytest.raises(AlgorithmNotAllowed):
        _verify(_token(KEY_B, "broker-b"), keys)
    with pytest.raises(UnknownKey):
        _verify(_token(KEY_A, "broker-a"), TrustedKeys.of([]))
