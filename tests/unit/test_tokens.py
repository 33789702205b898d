"""Mint and verify: the round trip for both algorithms, and one test per reason to refuse a token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from broker.signing_keys import SigningKey
from llama_direct import jws
from llama_direct.keys import PublicKeySet
from llama_direct.refusals import (
    AlgorithmNotAllowed,
    BadSignature,
    IssuedBeforeGateStart,
    MalformedToken,
    MissingClaim,
    MissingToken,
    TokenExpired,
    TokenNotYetValid,
    TokenRefusal,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
)
from llama_direct.tokens import (
    DEFAULT_TTL_SECONDS,
    LEEWAY_SECONDS,
    MAX_TOKEN_LENGTH,
    MAX_TTL_SECONDS,
    REQUIRED_CLAIMS,
    Claims,
    Grant,
    MintedToken,
    mint,
    verify,
)

NOW = 1_700_000_000.25
ISSUER = "broker-1"
AUDIENCE = "gate-1"
GRANT = Grant(
    routes=(("POST", "/v1/chat/completions"),),
    model="smollm2",
    max_tokens=256,
    origin="http://127.0.0.1:8080",
    conversation_id="conv-1",
)

_KEYS = {alg: SigningKey.generate(alg) for alg in ("EdDSA", "ES256")}


@pytest.fixture(params=["EdDSA", "ES256"])
def key(request: pytest.FixtureRequest) -> SigningKey:
    return _KEYS[request.param]


@pytest.fixture
def keys(key: SigningKey) -> PublicKeySet:
    return keyset(key)


def keyset(*signing_keys: SigningKey) -> PublicKeySet:
    return PublicKeySet({k.kid: (k.algorithm, k.public_key) for k in signing_keys})


def issue(key: SigningKey, now: float = NOW, **overrides: Any) -> MintedToken:
    args: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "subject": "alice", "scope": "chat",
                            "grant": GRANT, "now": now}
    return mint(key, **(args | overrides))


def check(token: str, keys: PublicKeySet, now: float = NOW, **overrides: Any) -> Claims:
    args: dict[str, Any] = {"keys": keys, "audience": AUDIENCE, "issuer": ISSUER, "now": now}
    return verify(token, **(args | overrides))


def refused(expected: type[TokenRefusal], token: object, keys: PublicKeySet, **overrides: Any) -> None:
    """The exact refusal, showing its fixed message only: nothing of the token, nor PyJWT's text."""
    with pytest.raises(TokenRefusal) as caught:
        check(token, keys, **overrides)  # type: ignore[arg-type]
    refusal = caught.value
    assert type(refusal) is expected
    assert refusal.status == 401
    assert refusal.message == expected.message
    assert refusal.to_body() == expected().to_body()
    assert refusal.__cause__ is None


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_json(value: object) -> str:
    return b64u(json.dumps(value, separators=(",", ":")).encode())


def signed(key: SigningKey, payload: dict[str, Any], **header: Any) -> str:
    """A token signed by `key` with whatever payload a test needs, bypassing mint's checks."""
    body = json.dumps(payload).encode()
    return jwt.PyJWS().encode(body, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, **header})


def hand_made(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64u_json(header)}.{b64u_json(payload)}"
    return f"{signing_input}.{b64u(sign(signing_input.encode()))}"


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(header))),
            json.loads(base64.urlsafe_b64decode(pad(payload))), signature)


# --- round trip ---------------------------------------------------------------------------------


def test_round_trip_returns_the_minted_claims(key: SigningKey, keys: PublicKeySet) -> None:
    minted = issue(key)
    assert check(minted.token, keys) == minted.claims
    assert minted.claims == Claims(
        iss=ISSUER, aud=AUDIENCE, sub="alice", iat=1_700_000_000, nbf=1_700_000_000,
        exp=1_700_000_000 + DEFAULT_TTL_SECONDS, jti=minted.claims.jti, scope="chat", grant=GRANT,
    )


def test_the_token_says_its_kid_and_algorithm(key: SigningKey) -> None:
    header, payload, _ = segments(issue(key).token)
    assert header == {"alg": key.algorithm, "kid": key.kid, "typ": "JWT"}
    assert sorted(payload) == sorted(REQUIRED_CLAIMS)
    assert payload["grant"] == {
        "routes": [["POST", "/v1/chat/completions"]], "model": "smollm2", "max_tokens": 256, "uses": 1,
        "origin": "http://127.0.0.1:8080", "conversation_id": "conv-1",
    }


def test_each_token_has_its_own_unguessable_jti(key: SigningKey) -> None:
    jtis = {issue(key).claims.jti for _ in range(50)}
    assert len(jtis) == 50
    assert all(len(jti) == 22 for jti in jtis)


def test_iat_is_the_whole_second_and_ttl_counts_from_it(key: SigningKey, keys: PublicKeySet) -> None:
    claims = issue(key, now=1000.999, ttl=120).claims
    assert (claims.iat, claims.nbf, claims.exp) == (1000, 1000, 1120)


def test_scope_may_be_a_space_separated_list(key: SigningKey, keys: PublicKeySet) -> None:
    minted = issue(key, scope="resume cancel")
    assert check(minted.token, keys).scope == "resume cancel"


# --- mint's own limits ----------------------------------------------------------------------------


def test_ttl_is_capped(key: SigningKey, keys: PublicKeySet) -> None:
    assert issue(key, ttl=MAX_TTL_SECONDS).claims.exp == 1_700_000_000 + MAX_TTL_SECONDS
    for ttl in (MAX_TTL_SECONDS + 1, 0, -5, 30.5, True):
        with pytest.raises(ValueError, match="ttl"):
            issue(key, ttl=ttl)


@pytest.mark.parametrize("scope", ["", "admin", "chat  resume", "chat,resume"])
def test_mint_refuses_an_unknown_scope(key: SigningKey, scope: str) -> None:
    with pytest.raises(ValueError, match="scope"):
        issue(key, scope=scope)


def test_mint_refuses_an_empty_subject(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        issue(key, subject="")


# --- grants -------------------------------------------------------------------------------------------


def test_grant_claim_omits_absent_fields_and_round_trips() -> None:
    grant = Grant(routes=(("GET", "/v1/stream"), ("DELETE", "/v1/stream")), model="m", max_tokens=1, uses=2)
    assert grant.to_claim() == {
        "routes": [["GET", "/v1/stream"], ["DELETE", "/v1/stream"]], "model": "m", "max_tokens": 1, "uses": 2,
    }
    assert Grant.from_claim(grant.to_claim()) == grant
    assert Grant.from_claim(GRANT.to_claim()) == GRANT


def test_a_users_stream_limit_rides_in_the_grant_only_when_set() -> None:
    grant = Grant(routes=(("POST", "/v1/chat/completions"),), model="m", max_tokens=8, streams=2)
    assert grant.to_claim()["streams"] == 2 and Grant.from_claim(grant.to_claim()) == grant
    assert "streams" not in Grant(routes=grant.routes, model="m", max_tokens=8).to_claim()


def test_grant_uses_defaults_to_one() -> None:
    claim = {"routes": [["POST", "/v1/chat/completions"]], "model": "m", "max_tokens": 8}
    assert Grant.from_claim(claim).uses == 1


@pytest.mark.parametrize(
    "claim",
    [
        None,
        [],
        "grant",
        {"model": "m", "max_tokens": 8},
        {"routes": [["POST", "/x"]], "max_tokens": 8},
        {"routes": [["POST", "/x"]], "model": "m"},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8, "admin": True},
        {"routes": [], "model": "m", "max_tokens": 8},
        {"routes": "POST /x", "model": "m", "max_tokens": 8},
        {"routes": [["POST"]], "model": "m", "max_tokens": 8},
        {"routes": [["POST", "/x", "extra"]], "model": "m", "max_tokens": 8},
        {"routes": [["POST", 1]], "model": "m", "max_tokens": 8},
        {"routes": ["POST /x"], "model": "m", "max_tokens": 8},
        {"routes": [["POST", "/x"]], "model": "", "max_tokens": 8},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 0},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8.0},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": True},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8, "uses": 0},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8, "uses": "1"},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8, "origin": ""},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8, "origin": 5},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8, "conversation_id": ["c"]},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8, "streams": 0},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8, "streams": True},
        {"routes": [["POST", "/x"]], "model": "m", "max_tokens": 8, "streams": "2"},
    ],
)
def test_a_grant_of_the_wrong_shape_is_a_malformed_token(claim: object) -> None:
    with pytest.raises(MalformedToken):
        Grant.from_claim(claim)


def test_a_grant_with_a_bad_shape_inside_a_signed_token_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    payload = issue(key).claims.to_payload() | {"grant": {"routes": [["POST", "/x"]], "model": "m"}}
    refused(MalformedToken, signed(key, payload), keys)


# --- time ---------------------------------------------------------------------------------------------


def test_expired_token_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    claims = issue(key).claims
    refused(TokenExpired, issue(key).token, keys, now=claims.exp + LEEWAY_SECONDS + 60)


def test_expiry_leeway_boundary(key: SigningKey, keys: PublicKeySet) -> None:
    minted = issue(key)
    exp = minted.claims.exp
    assert check(minted.token, keys, now=exp + LEEWAY_SECONDS - 0.001) == minted.claims
    refused(TokenExpired, minted.token, keys, now=exp + LEEWAY_SECONDS)
    assert check(minted.token, keys, now=exp - 0.001, leeway=0) == minted.claims
    refused(TokenExpired, minted.token, keys, now=exp, leeway=0)


def test_not_yet_valid_token_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    minted = issue(key, now=NOW + 3600)
    refused(TokenNotYetValid, minted.token, keys, now=NOW)


def test_not_before_leeway_boundary(key: SigningKey, keys: PublicKeySet) -> None:
    minted = issue(key)
    nbf = minted.claims.nbf
    assert check(minted.token, keys, now=nbf - LEEWAY_SECONDS) == minted.claims
    refused(TokenNotYetValid, minted.token, keys, now=nbf - LEEWAY_SECONDS - 0.001)


def test_a_future_iat_is_refused_even_with_a_past_nbf(key: SigningKey, keys: PublicKeySet) -> None:
    payload = issue(key).claims.to_payload() | {"iat": int(NOW) + 60, "nbf": int(NOW) - 10}
    refused(TokenNotYetValid, signed(key, payload), keys)


def test_leeway_above_five_seconds_is_a_programming_error(key: SigningKey, keys: PublicKeySet) -> None:
    with pytest.raises(ValueError, match="leeway"):
        check(issue(key).token, keys, leeway=LEEWAY_SECONDS + 1)


def test_a_token_issued_before_the_gate_started_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    minted = issue(key)
    iat = minted.claims.iat
    assert check(minted.token, keys, not_issued_before=iat) == minted.claims
    refused(IssuedBeforeGateStart, minted.token, keys, not_issued_before=iat + 1)


def test_a_lifetime_above_the_cap_is_refused_even_when_signed(key: SigningKey, keys: PublicKeySet) -> None:
    claims = issue(key).claims
    payload = claims.to_payload() | {"exp": claims.iat + MAX_TTL_SECONDS + 1}
    refused(MalformedToken, signed(key, payload), keys)


# --- audience and issuer --------------------------------------------------------------------------------


def test_wrong_audience_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    refused(WrongAudience, issue(key, audience="other-gate").token, keys)


def test_an_audience_list_is_refused_even_if_it_names_the_gate(key: SigningKey, keys: PublicKeySet) -> None:
    payload = issue(key).claims.to_payload() | {"aud": [AUDIENCE]}
    refused(WrongAudience, signed(key, payload), keys)


def test_wrong_issuer_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    refused(WrongIssuer, issue(key, issuer="someone-else").token, keys)


# --- algorithms ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(key: SigningKey, keys: PublicKeySet, alg: str) -> None:
    payload = issue(key).claims.to_payload()
    token = hand_made({"alg": alg, "kid": key.kid, "typ": "JWT"}, payload, lambda _: b"")
    refused(AlgorithmNotAllowed, token, keys)
    refused(AlgorithmNotAllowed, token[: token.rindex(".")], keys)


def public_key_secrets(key: SigningKey) -> list[bytes]:
    public = key.public_key
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return [pem, der, json.dumps(dict(key.public_jwk)).encode()]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_is_refused(key: SigningKey, keys: PublicKeySet, alg: str) -> None:
    payload = issue(key).claims.to_payload()
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for secret in public_key_secrets(key):
        token = hand_made({"alg": alg, "kid": key.kid, "typ": "JWT"}, payload,
                          lambda data, s=secret: hmac.new(s, data, digest).digest())
        refused(AlgorithmNotAllowed, token, keys)


def test_an_algorithm_other_than_the_kids_own_is_refused() -> None:
    ed, es = _KEYS["EdDSA"], _KEYS["ES256"]
    payload = issue(ed).claims.to_payload()
    token = jwt.encode(payload, es.private_key, algorithm="ES256", headers={"kid": ed.kid})
    refused(AlgorithmNotAllowed, token, keyset(ed, es))


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES384", "ES512", "Ed25519", "", None, 1, ["EdDSA"]])
def test_other_algorithms_are_refused(key: SigningKey, keys: PublicKeySet, alg: object) -> None:
    token = issue(key).token
    header, _, _ = segments(token)
    forged = b64u_json(header | {"alg": alg}) + token[token.index("."):]
    refused(AlgorithmNotAllowed, forged, keys)


def test_a_header_without_alg_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    token = issue(key).token
    forged = b64u_json({"kid": key.kid, "typ": "JWT"}) + token[token.index("."):]
    refused(AlgorithmNotAllowed, forged, keys)


# --- signatures and keys -------------------------------------------------------------------------------


def test_tampered_payload_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    header, payload, signature = issue(key).token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for change in ({"sub": "mallory"}, {"grant": claims["grant"] | {"max_tokens": 100_000}},
                   {"exp": claims["exp"] + 60}):
        refused(BadSignature, f"{header}.{b64u_json(claims | change)}.{signature}", keys)


def test_tampered_header_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    token = issue(key).token
    header, _, _ = segments(token)
    forged = b64u_json(header | {"typ": "at+jwt"}) + token[token.index("."):]
    refused(BadSignature, forged, keys)


def test_tampered_signature_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    head, _, signature = issue(key).token.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    for index in (0, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        refused(BadSignature, f"{head}.{b64u(bytes(flipped))}", keys)
    refused(BadSignature, f"{head}.{b64u(bytes(raw[:-3]))}", keys)
    refused(BadSignature, f"{head}.{b64u(bytes(len(raw)))}", keys)


def test_a_signature_from_another_token_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    one, other = issue(key).token, issue(key, subject="bob").token
    refused(BadSignature, one.rpartition(".")[0] + "." + other.rpartition(".")[2], keys)


def test_unknown_kid_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    stranger = SigningKey.generate(key.algorithm)
    refused(UnknownKey, issue(stranger).token, keys)


def test_a_key_of_the_same_kid_that_is_not_the_published_one_is_refused(key: SigningKey) -> None:
    stranger = SigningKey.generate(key.algorithm)
    impostor = SigningKey(kid=key.kid, algorithm=key.algorithm, private_key=stranger.private_key)
    refused(BadSignature, issue(impostor).token, keyset(key))


@pytest.mark.parametrize(
    "kid", ["../../etc/passwd", "/dev/zero", "", " ", "\x00", "a" * 4000, 7, None, ["kid"], {"kid": "x"}]
)
def test_an_injected_or_missing_kid_is_refused(key: SigningKey, keys: PublicKeySet, kid: object) -> None:
    payload = issue(key).claims.to_payload()
    header = {"alg": key.algorithm, "typ": "JWT"} | ({} if kid is None else {"kid": kid})
    token = hand_made(header, payload, lambda data: b"\x00" * 64)
    refused(UnknownKey, token, keys)


def test_an_empty_keyset_knows_no_kid(key: SigningKey) -> None:
    refused(UnknownKey, issue(key).token, PublicKeySet({}))


# --- claims ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_each_required_claim_is_required(key: SigningKey, keys: PublicKeySet, claim: str) -> None:
    payload = issue(key).claims.to_payload()
    refused(MissingClaim, signed(key, {k: v for k, v in payload.items() if k != claim}), keys)
    refused(MissingClaim, signed(key, payload | {claim: None}), keys)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"iat": 1_700_000_000.5}, MalformedToken),
        ({"nbf": "1700000000"}, MalformedToken),
        ({"exp": True}, MalformedToken),
        ({"sub": 42}, MalformedToken),
        ({"sub": ""}, MalformedToken),
        ({"jti": ["x"]}, MalformedToken),
        ({"jti": ""}, MalformedToken),
        ({"scope": ["chat"]}, MalformedToken),
        ({"iss": ["broker-1"]}, WrongIssuer),
    ],
)
def test_claims_of_the_wrong_type_are_refused(
    key: SigningKey, keys: PublicKeySet, change: dict[str, Any], expected: type[TokenRefusal]
) -> None:
    refused(expected, signed(key, issue(key).claims.to_payload() | change), keys)


# --- malformed input -------------------------------------------------------------------------------------


def test_no_token_is_a_missing_token(keys: PublicKeySet) -> None:
    refused(MissingToken, "", keys)


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "...",
        "a.b.c",
        "!!!.!!!.!!!",
        b64u(b"not json") + ".e30.AAAA",
        b64u_json([1, 2]) + ".e30.AAAA",
        b64u_json("EdDSA") + ".e30.AAAA",
        "[" * 5000,
        b64u(b"[" * 6000) + ".e30.AAAA",
        "ëyJ.abc.def",
    ],
)
def test_malformed_tokens_are_refused(keys: PublicKeySet, token: str) -> None:
    refused(MalformedToken, token, keys)


def test_a_token_that_is_not_a_string_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    refused(MalformedToken, issue(key).token.encode(), keys)
    refused(MalformedToken, None, keys)


def test_a_truncated_token_is_refused(key: SigningKey, keys: PublicKeySet) -> None:
    token = issue(key).token
    refused(MalformedToken, token[:-1], keys)
    refused(MalformedToken, token.rpartition(".")[0], keys)
    refused(MalformedToken, token[: token.index(".") + 5], keys)


def test_non_base64_segments_are_refused(key: SigningKey, keys: PublicKeySet) -> None:
    header, payload, signature = issue(key).token.split(".")
    refused(MalformedToken, f"{header}.{payload[:-2]}*!.{signature}", keys)
    refused(MalformedToken, f"{header}.{payload}.{signature[:-2]}+/", keys)
    refused(MalformedToken, f"{header}.{payload} .{signature}", keys)


@pytest.mark.parametrize("payload", [b"[1]", b'"claims"', b"not json", b""])
def test_a_signed_payload_that_is_not_an_object_is_refused(
    key: SigningKey, keys: PublicKeySet, payload: bytes
) -> None:
    token = jwt.PyJWS().encode(payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})
    refused(MalformedToken, token, keys)


def test_an_oversized_token_is_refused_before_decoding(key: SigningKey, keys: PublicKeySet) -> None:
    big_grant = Grant(routes=(("POST", "/v1/chat/completions"),), model="m" * 6000, max_tokens=1)
    token = issue(key, grant=big_grant).token
    assert len(token) > MAX_TOKEN_LENGTH
    refused(MalformedToken, token, keys)
    refused(MalformedToken, "a" * (MAX_TOKEN_LENGTH + 1), keys)


# --- the verified-header memo (issue 18, P5) ------------------------------------------------------


def test_a_remembered_header_still_meets_the_key_lookup_and_the_pinned_algorithm(key: SigningKey) -> None:
    token = issue(key).token
    check(token, keyset(key))
    assert token.partition(".")[0] in jws._VERIFIED_HEADERS
    other = _KEYS["EdDSA" if key.algorithm == "ES256" else "ES256"]
    refused(UnknownKey, token, keyset(other))
    refused(AlgorithmNotAllowed, token, PublicKeySet({key.kid: (other.algorithm, other.public_key)}))
    assert check(token, keyset(key)).sub == "alice"


def test_a_header_is_remembered_only_once_its_signature_checked_out(key: SigningKey, keys: PublicKeySet) -> None:
    token = signed(key, issue(key).claims.to_payload(), extra="never-verified")
    head, _, rest = token.partition(".")
    forged = head + "." + rest[: rest.index(".")] + "." + b64u(b"\x01" * 64)
    refused(BadSignature, forged, keys)
    assert head not in jws._VERIFIED_HEADERS


def test_the_memo_is_bounded(key: SigningKey, keys: PublicKeySet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jws, "_VERIFIED_HEADERS", {})
    monkeypatch.setattr(jws, "_MAX_VERIFIED_HEADERS", 3)
    payload = issue(key).claims.to_payload()
    tokens = [signed(key, payload, n=n) for n in range(6)]
    for token in tokens:
        assert check(token, keys).sub == "alice"
    assert list(jws._VERIFIED_HEADERS) == [t.partition(".")[0] for t in tokens[3:]]  # the newest stay


def test_the_ed25519_check_is_libsodiums_and_agrees_with_openssl(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate checks Ed25519 with libsodium; it must accept exactly what OpenSSL accepts for our keys."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import llama_direct.keys
    from llama_direct.keys import signature_check

    calls: list[int] = []
    sodium_open = llama_direct.keys.crypto_sign_open
    monkeypatch.setattr(llama_direct.keys, "crypto_sign_open",
                        lambda signed, key: calls.append(len(signed)) or sodium_open(signed, key))
    private = Ed25519PrivateKey.generate()
    check = signature_check("EdDSA", private.public_key())
    for size in (0, 1, 100, 700):
        message = bytes(range(256)) * 3
        message = message[:size]
        signature = private.sign(message)
        assert check(message, signature)
        flipped = bytes([signature[0] ^ 1]) + signature[1:]
        for bad_message, bad_signature in ((message + b"x", signature), (message, flipped),
                                           (message, signature[:63]), (message, signature + b"\0"), (message, b"")):
            with pytest.raises((InvalidSignature, ValueError)):
                private.public_key().verify(bad_signature, bad_message)
            assert not check(bad_message, bad_signature)
    other = Ed25519PrivateKey.generate()
    assert not check(b"m", other.sign(b"m"))
    assert len(calls) == 4 * 3 + 1  # every well-sized signature went to libsodium; wrong sizes never did
