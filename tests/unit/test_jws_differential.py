"""The gate's verification core against PyJWT, on mutated and re-signed tokens (issue 18, P5).

The reference is the check the gate made before the core: the header read to pick the key, then
PyJWT's `decode` with that key's algorithm only and the same options. What the test promises, and
all it promises: both accept the same tokens, with the same claims, and the core never accepts what
PyJWT refuses. Where both refuse, the class of the refusal is recorded (a hypothesis event) and not
compared: PyJWT reads a header loosely before its strict pass and the core reads it strictly once,
so which check fires first on a token that is wrong twice is PyJWT's choice to move between
releases (2.15 calls a header with a trailing `\r` a bad signature; earlier releases called it
malformed), and a client learns nothing from it either way. Two documented differences, where the
core is stricter: it refuses `=` padding, which PyJWT tolerates (RFC 7515 §2 forbids it), and
whitespace around a JSON object; no minter of ours writes either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_strength import examples
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from broker.signing_keys import SigningKey
from llama_direct import jws
from llama_direct.keys import PublicKeySet
from llama_direct.refusals import (
    AlgorithmNotAllowed,
    BadSignature,
    MalformedToken,
    MissingClaim,
    TokenRefusal,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
)
from llama_direct.tokens import REQUIRED_CLAIMS, Grant, mint

ISSUER = "broker-1"
AUDIENCE = "gate-1"
NOW = 1_700_000_000
_KEYS = {alg: SigningKey.generate(alg) for alg in ("EdDSA", "ES256")}
_STRANGER = SigningKey.generate("EdDSA")
KEYSET = PublicKeySet({k.kid: (k.algorithm, k.public_key) for k in _KEYS.values()})
_GRANT = Grant(routes=(("POST", "/v1/chat/completions"),), model="m", max_tokens=8)
_SETTINGS = settings(max_examples=examples(1000), deadline=None, suppress_health_check=[HealthCheck.too_slow])

_DECODER = jwt.PyJWT({"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                      "require": list(REQUIRED_CLAIMS), "strict_aud": True})
_REFUSALS: dict[type[jwt.PyJWTError], type[TokenRefusal]] = {
    jwt.InvalidAudienceError: WrongAudience,
    jwt.InvalidIssuerError: WrongIssuer,
    jwt.MissingRequiredClaimError: MissingClaim,
    jwt.InvalidSignatureError: BadSignature,
    jwt.InvalidAlgorithmError: AlgorithmNotAllowed,
    jwt.DecodeError: MalformedToken,
}


def reference(token: str) -> dict[str, Any] | type[TokenRefusal]:
    """What `tokens.verify` did with PyJWT before the core (its `_key_for`, `decode`, `_refusal_for`)."""
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        return MalformedToken
    if not isinstance(header, dict):
        return MalformedToken
    alg = header.get("alg")
    if alg not in jws.ALGORITHMS:
        return AlgorithmNotAllowed
    kid = header.get("kid")
    entry = KEYSET.keys.get(kid) if isinstance(kid, str) else None
    if entry is None:
        return UnknownKey
    if entry[0] != alg:
        return AlgorithmNotAllowed
    try:
        payload: dict[str, Any] = _DECODER.decode(
            token, entry[1], algorithms=(alg,), audience=AUDIENCE, issuer=[ISSUER, "broker-2"]
        )
    except jwt.PyJWTError as exc:
        for cls in type(exc).__mro__:
            if cls in _REFUSALS:
                return _REFUSALS[cls]
        return MalformedToken
    return payload


def core(token: str) -> dict[str, Any] | type[TokenRefusal]:
    try:
        return jws.decode(token, KEYSET, audience=AUDIENCE, issuer=[ISSUER, "broker-2"],
                          required=REQUIRED_CLAIMS)
    except TokenRefusal as refusal:
        return type(refusal)


def assert_same_decision(token: str) -> None:
    expected, got = reference(token), core(token)
    if "=" in token:  # PyJWT may accept it, or refuse it later (the signature); the core never accepts it
        assert not isinstance(got, dict), token
        if got is MalformedToken:
            event("padding: the core refuses it as malformed (documented)")
            return
    if isinstance(expected, dict) or isinstance(got, dict):
        assert expected == got, token
        event("accepted")
        return
    event(f"refused: PyJWT {expected.__name__}, core {got.__name__}")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: Any, alg: str, signing_input: bytes) -> bytes:
    """Sign as a minter would: raw r||s for ES256, HMAC with the public key's PEM for HS256."""
    if alg == "HS256":
        return hmac.new(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), signing_input,
            hashlib.sha256).digest()
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(signing_input)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return jwt.utils.der_to_raw_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())), key.curve)


def _token(key: SigningKey) -> str:
    return mint(key, issuer=ISSUER, audience=AUDIENCE, subject="alice", scope="chat", grant=_GRANT,
                now=NOW).token


_VALID = {alg: _token(key) for alg, key in _KEYS.items()}
_CHARS = st.sampled_from("AaBbQwxyz019-_+/=.!% \x00é\n")


@st.composite
def text_mutations(draw: st.DrawFn) -> str:
    """A valid token with a few characters replaced, inserted, deleted, or the token cut."""
    token = _VALID[draw(st.sampled_from(sorted(_VALID)))]
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(token)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "cut"] * 3 + ["pad"]))
        if kind == "replace" and where < len(token):
            token = token[:where] + draw(_CHARS) + token[where + 1:]
        elif kind == "insert":
            token = token[:where] + draw(_CHARS) + token[where:]
        elif kind == "delete":
            token = token[:where] + token[where + 1:]
        elif kind == "cut":
            token = token[:where]
        else:
            parts = token.split(".")
            i = draw(st.integers(0, len(parts) - 1))
            parts[i] += "=" * draw(st.integers(1, 3))
            token = ".".join(parts)
    return token


_JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**64), st.floats(allow_nan=False),
                         st.text(max_size=4), st.lists(st.text(max_size=3), max_size=2))


@st.composite
def signed_variants(draw: st.DrawFn) -> str:
    """Headers and claims changed, then signed for real, so every check after the signature is reached."""
    key = _KEYS[draw(st.sampled_from(sorted(_KEYS)))]
    header: dict[str, Any] = {"alg": key.algorithm, "kid": key.kid, "typ": "JWT"}
    payload = jwt.decode(_VALID[key.algorithm], options={"verify_signature": False})
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(["alg", "kid", "crit", "b64", "drop"] + ["claim"] * 5))
        if target == "alg":
            header["alg"] = draw(st.sampled_from(["none", "None", "HS256", "ES256", "EdDSA", "RS256", "", None, 1]))
        elif target == "kid":
            header["kid"] = draw(st.sampled_from([_STRANGER.kid, _KEYS["ES256"].kid, _KEYS["EdDSA"].kid, 7, None]))
        elif target == "crit":
            header["crit"] = draw(st.sampled_from([["b64"], [], "b64", ["exp"], [1], ["b64", "x"]]))
        elif target == "b64":
            header["b64"] = draw(st.sampled_from([True, False, 0, "false"]))
        elif target == "claim":
            name = draw(st.sampled_from([*REQUIRED_CLAIMS, "extra"]))
            payload[name] = draw(st.one_of(_JSON_VALUES, st.sampled_from(
                [ISSUER, "broker-2", "evil", AUDIENCE, [AUDIENCE], "", NOW])))
        else:
            payload.pop(draw(st.sampled_from(REQUIRED_CLAIMS)), None)
    header_json = json.dumps(header).encode()
    plain = json.dumps(payload).encode()
    payload_json = draw(st.sampled_from([plain] * 6 + [
        json.dumps(payload).encode("utf-16"),
        b"[1]", b"\"x\"", b"{", b"",
        plain[:-1] + b", \"aud\": \"other\"}",  # a duplicate key: both keep the last
        b'{"aud": "other", ' + plain[1:],
    ]))
    signing_input = f"{b64(header_json)}.{b64(payload_json)}".encode()
    signer = key.private_key if header.get("kid") != _STRANGER.kid else _STRANGER.private_key
    signature = sign(signer, "HS256" if header.get("alg") == "HS256" else key.algorithm, signing_input)
    return f"{signing_input.decode()}.{b64(signature)}"


@_SETTINGS
@given(token=text_mutations())
def test_the_core_decides_as_pyjwt_on_mutated_tokens(token: str) -> None:
    assert_same_decision(token)


@_SETTINGS
@given(token=signed_variants())
def test_the_core_decides_as_pyjwt_on_re_signed_headers_and_claims(token: str) -> None:
    assert_same_decision(token)


@_SETTINGS
@given(token=st.text(alphabet=st.sampled_from("ey.JhbGciOi-_A0="), max_size=120))
def test_the_core_decides_as_pyjwt_on_random_token_shaped_text(token: str) -> None:
    assert_same_decision(token)


@pytest.mark.parametrize("alg", sorted(_KEYS))
def test_a_valid_token_is_accepted_by_both(alg: str) -> None:
    assert core(_VALID[alg]) == reference(_VALID[alg])
    assert isinstance(core(_VALID[alg]), dict)


def test_a_padded_token_is_refused_by_the_core_alone() -> None:
    header, payload, signature = _VALID["ES256"].split(".")
    padded = f"{header}.{payload}.{signature}" + "=" * (-len(signature) % 4)
    if padded == _VALID["ES256"]:  # an ES256 signature is 86 characters: always 2 short of a quad
        pytest.fail("expected a signature that needs padding")
    assert isinstance(reference(padded), dict)
    assert core(padded) is MalformedToken


def test_whitespace_around_the_json_is_refused_by_the_core_alone() -> None:
    key = _KEYS["EdDSA"]
    header = b64(json.dumps({"alg": "EdDSA", "kid": key.kid}).encode())
    payload = b64(b" " + json.dumps(jwt.decode(_VALID["EdDSA"], options={"verify_signature": False})).encode())
    signing_input = f"{header}.{payload}".encode()
    token = f"{signing_input.decode()}.{b64(sign(key.private_key, 'EdDSA', signing_input))}"
    assert isinstance(reference(token), dict)
    assert core(token) is MalformedToken


def test_a_header_with_a_trailing_carriage_return_is_refused_by_both() -> None:
    """PyJWT 2.15 calls it a bad signature, the core malformed: both refuse, which is the promise."""
    header, payload, signature = _VALID["EdDSA"].split(".")
    header_json = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    token = ".".join((b64(header_json + b"\r"), payload, signature))
    assert not isinstance(reference(token), dict)
    assert core(token) is MalformedToken
