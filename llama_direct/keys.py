"""The public half of the broker's keys, as the gate holds it: JWKS parsing and RFC 7638 thumbprints.

No private key is ever read, made or written here; that is `broker.signing_keys`, which the gate
never imports.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
SignatureCheck = Callable[[bytes, bytes], bool]
"""(signing input, signature) -> whether the signature is the key's, with the key's own algorithm."""
Candidate = tuple[str, SignatureCheck, frozenset[str] | None]
"""One key a kid may name: (its algorithm, its signature check, the `iss` it may sign for, None: any
that the verifier accepts)."""

_P256_BYTES = 32
_ED25519_SIGNATURE_BYTES = 64
_JWK_KINDS = {("OKP", "Ed25519", "EdDSA"), ("EC", "P-256", "ES256")}


class KeyChecks(Protocol):
    """What a verifier reads: kid -> the keys it may name (one, unless two issuers chose one kid)."""

    @property
    def checks(self) -> Mapping[str, tuple[Candidate, ...]]: ...


@dataclass(frozen=True)
class PublicKeySet:
    """One broker's keys as the gate holds them: kid -> (algorithm, public key).

    `issuers` binds them: a token they verify must name one of these `iss` (None: any accepted one),
    so a broker whose keys the gate pulled from its own URL cannot sign for another broker.
    """

    keys: Mapping[str, tuple[str, PublicKey]]
    issuers: frozenset[str] | None = None
    checks: Mapping[str, tuple[Candidate, ...]] = field(init=False, repr=False, compare=False)
    """kid -> its one candidate, the signature check built once per key set rather than per token."""

    def __post_init__(self) -> None:
        checks = {kid: ((alg, signature_check(alg, key), self.issuers),) for kid, (alg, key) in self.keys.items()}
        object.__setattr__(self, "checks", MappingProxyType(checks))

    def bound_to(self, issuers: Iterable[str] | None) -> PublicKeySet:
        """The same keys, allowed to sign for these `iss` only (None: any accepted one)."""
        return PublicKeySet(self.keys, None if issuers is None else frozenset(issuers))

    @classmethod
    def from_jwks(cls, jwks: dict[str, Any]) -> PublicKeySet:
        """Read a JWKS; keys of other kinds are skipped, a broken key of ours is an error."""
        entries = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(entries, list):
            raise ValueError("a JWKS is an object with a list of keys")
        keys: dict[str, tuple[str, PublicKey]] = {}
        for jwk in entries:
            if not isinstance(jwk, dict):
                raise ValueError("each JWKS entry must be an object")
            kind = (jwk.get("kty"), jwk.get("crv"), jwk.get("alg"))
            if kind not in _JWK_KINDS or jwk.get("use", "sig") != "sig":
                continue
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid or kid in keys:
                raise ValueError("each key needs a kid of its own")
            keys[kid] = (kind[2], public_key_from_jwk(jwk))
        return cls(MappingProxyType(keys))


@dataclass(frozen=True)
class TrustedKeys:
    """Several brokers' key sets as one, each key still bound to its set's issuers.

    A kid two sets share is one candidate when it is the same key with the same algorithm (a shared
    signing key: its issuers are joined), else both stay, each bound to its own issuers: the verifier
    tries each and then holds the token's `iss` to the issuers of the key that verified it.
    """

    sets: tuple[PublicKeySet, ...]
    checks: Mapping[str, tuple[Candidate, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        merged: dict[str, list[tuple[str, PublicKey, frozenset[str] | None]]] = {}
        for keyset in self.sets:
            for kid, (alg, key) in keyset.keys.items():
                entries = merged.setdefault(kid, [])
                for n, (other_alg, other_key, other_issuers) in enumerate(entries):
                    if other_alg == alg and jwk_members(other_key) == jwk_members(key):
                        entries[n] = (alg, key, _joined(other_issuers, keyset.issuers))
                        break
                else:
                    entries.append((alg, key, keyset.issuers))
        checks = {kid: tuple((alg, signature_check(alg, key), bound) for alg, key, bound in entries)
                  for kid, entries in merged.items()}
        object.__setattr__(self, "checks", MappingProxyType(checks))

    @classmethod
    def of(cls, sets: Iterable[PublicKeySet]) -> TrustedKeys:
        return cls(tuple(sets))


def _joined(one: frozenset[str] | None, other: frozenset[str] | None) -> frozenset[str] | None:
    return None if one is None or other is None else one | other


def signature_check(algorithm: str, public_key: PublicKey) -> SignatureCheck:
    """The check for one key, pinned to its algorithm; a key of another kind is an error, not a pass.

    ES256 signatures are raw r||s (RFC 7518 §3.4), re-encoded as the DER that OpenSSL reads; any
    other length is a bad signature, as in PyJWT.

    Ed25519 is checked by libsodium (PyNaCl): on the x86-64 machines measured it verifies in about
    three quarters of OpenSSL's time (105 against 138 µs), and it is at least as strict (it also
    refuses small-order keys and non-canonical points, which no key of ours is).
    """
    if algorithm == "EdDSA" and isinstance(public_key, Ed25519PublicKey):
        raw_key = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

        def check_eddsa(message: bytes, signature: bytes) -> bool:
            if len(signature) != _ED25519_SIGNATURE_BYTES:
                return False
            try:
                crypto_sign_open(signature + message, raw_key)
            except BadSignatureError:
                return False
            return True

        return check_eddsa
    if algorithm == "ES256" and isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        verify_ecdsa, ecdsa = public_key.verify, ec.ECDSA(hashes.SHA256())

        def check_es256(message: bytes, signature: bytes) -> bool:
            if len(signature) != 2 * _P256_BYTES:
                return False
            r = int.from_bytes(signature[:_P256_BYTES], "big")
            s = int.from_bytes(signature[_P256_BYTES:], "big")
            try:
                verify_ecdsa(encode_dss_signature(r, s), message, ecdsa)
            except InvalidSignature:
                return False
            return True

        return check_es256
    raise ValueError("the key does not fit its algorithm")


def thumbprint(jwk_members: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 of the required members in lexicographic order, no whitespace, base64url."""
    canonical = json.dumps(dict(jwk_members), sort_keys=True, separators=(",", ":")).encode()
    return _b64u(hashlib.sha256(canonical).digest())



def jwk_members(public_key: PublicKey) -> dict[str, str]:
    """The members RFC 7638 hashes, which are also all a verifier needs."""
    if isinstance(public_key, Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64u(raw)}
    numbers = public_key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64u(numbers.x.to_bytes(_P256_BYTES, "big")),
        "y": _b64u(numbers.y.to_bytes(_P256_BYTES, "big")),
    }


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    try:
        if jwk["kty"] == "OKP":
            return Ed25519PublicKey.from_public_bytes(_b64u_decode(jwk["x"], 32))
        x = int.from_bytes(_b64u_decode(jwk["x"], _P256_BYTES), "big")
        y = int.from_bytes(_b64u_decode(jwk["y"], _P256_BYTES), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except (KeyError, TypeError, ValueError, UnsupportedAlgorithm):
        raise ValueError("a JWKS key is not a valid public key") from None


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64u_decode(value: object, length: int) -> bytes:
    if not isinstance(value, str):
        raise ValueError("not a string")
    data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if len(data) != length:
        raise ValueError("wrong length")
    return data
