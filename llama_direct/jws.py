"""The gate's token check: a small, pure JWS verification core over `cryptography` (issue 18, P5).

Why not PyJWT here: its Python-level work (a per-character base64 genexpr, option merging, key
preparation on every call) costs more than the signature itself, and the gate checks a token on
every lane request. The other maintained Python JOSE libraries (jwcrypto, joserfc, authlib) are
Python layers over the same `cryptography` calls too; only PyJWT was timed here. The issue allows
this core for verification only; minting stays on PyJWT (`tokens.mint`).

What it keeps of PyJWT, check by check and in PyJWT's order, so the refusals stay the same:
the header picks the key by `kid` and the key's own algorithm must equal the header's `alg` (a
token cannot choose its algorithm: `none`, HS256 or a mismatch is refused before any crypto);
a key pulled from another broker's JWKS signs only for that broker's `iss` (`keys.TrustedKeys`);
exactly three segments, each canonical unpadded base64url (stricter than PyJWT, which accepts
`=` padding); header and payload JSON objects (read by `json`'s own scanner; whitespace
around the object is refused, which PyJWT allows); `crit` only as PyJWT allows it, and `b64: false`
refused (it needs a detached payload, which the gate never has); the signature checked before the
payload is parsed; then the required claims, `iss`, the strict single `aud`, `sub` and `jti`.
`tests/unit/test_jws_differential.py` fuzzes it against PyJWT.

One memo, for speed: a header segment whose token verified is remembered with its `alg` and `kid`
(`_VERIFIED_HEADERS`), so the broker's header, the same on every token of a key, is decoded once.
Only a token with a good signature adds one, so only headers the broker signed get in, and the
refusals do not change: a remembered header is one that passed every header check, and the same
text always passes them; the key lookup and the algorithm pinning still run on every token.
"""

from __future__ import annotations

import binascii
import json
import json.scanner
from collections.abc import Callable, Sequence
from typing import Any

from llama_direct.keys import KeyChecks, SignatureCheck
from llama_direct.refusals import (
    AlgorithmNotAllowed,
    BadSignature,
    MalformedToken,
    MissingClaim,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
)

ALGORITHMS = ("EdDSA", "ES256")
_SCAN_JSON: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]  # typeshed types the argument as the scanner's own class
)
"""`json.loads`'s own scanner, called directly: the same parser without its Python wrapper (~3 µs)."""
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")
_CANONICAL_LAST = (None, None, frozenset("AQgw"), frozenset("AEIMQUYcgkosw048"))
"""By length mod 4, the characters a canonical segment may end with: the unused low bits are zero."""
_SUPPORTED_CRIT = frozenset({"b64"})
"""What PyJWT understands in `crit`; anything else is refused, as RFC 7515 §4.1.11 requires."""
_VERIFIED_HEADERS: dict[str, tuple[str, str]] = {}
"""Header segment -> (alg, kid), for headers of tokens that verified; see the module's docstring."""
_MAX_VERIFIED_HEADERS = 64
"""Far above the keys a broker publishes at once (current, staged, retired); past it, the oldest goes."""


def decode(
    token: str,
    keys: KeyChecks,
    *,
    audience: str,
    issuer: str | Sequence[str],
    required: Sequence[str],
) -> dict[str, Any]:
    """The verified payload of a compact JWS, or a `TokenRefusal`; the time claims are the caller's."""
    header_segment, _, rest = token.partition(".")
    known = _VERIFIED_HEADERS.get(header_segment)
    header: dict[str, Any] | None = None
    alg: Any
    kid: Any
    if known is None:
        header = _json_object(_b64url(header_segment))
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AlgorithmNotAllowed()
        kid = header.get("kid")
    else:
        alg, kid = known
    candidates = keys.checks.get(kid) if isinstance(kid, str) else None
    if candidates is None:
        raise UnknownKey()
    fitting = [(check, bound) for key_alg, check, bound in candidates if key_alg == alg]
    if not fitting:
        raise AlgorithmNotAllowed()
    payload_segment, dot, signature_segment = rest.partition(".")
    if not dot or "." in signature_segment:
        raise MalformedToken()
    if header is not None:
        _check_crit(header)
    payload_bytes = _b64url(payload_segment)
    signature = _b64url(signature_segment)
    signing_input = token[: len(header_segment) + 1 + len(payload_segment)].encode("ascii")
    bound = _signer(fitting, signing_input, signature)
    if header is not None:
        if len(_VERIFIED_HEADERS) >= _MAX_VERIFIED_HEADERS:  # the oldest goes: keys rotate for months
            del _VERIFIED_HEADERS[next(iter(_VERIFIED_HEADERS))]
        _VERIFIED_HEADERS[header_segment] = (alg, kid)
    payload = _json_object(payload_bytes)
    _check_registered(payload, audience=audience, issuer=issuer, required=required)
    if bound is not None and payload["iss"] not in bound:  # a key pulled for one broker, naming another
        raise WrongIssuer()
    return payload


def _signer(
    fitting: list[tuple[SignatureCheck, frozenset[str] | None]], signing_input: bytes, signature: bytes
) -> frozenset[str] | None:
    """The binding of the key that made the signature; one key unless two issuers publish one kid."""
    for signature_ok, bound in fitting:
        if signature_ok(signing_input, signature):
            return bound
    raise BadSignature()


def _b64url(segment: str) -> bytes:
    """Canonical unpadded base64url only: its alphabet, no `=`, and zero bits where none are used.

    `strict_mode` refuses every character outside standard base64's alphabet; the three that
    standard base64 has and base64url has not (`+`, `/`, `=`) are refused before it.
    """
    size = len(segment) % 4
    if size == 1 or "+" in segment or "/" in segment or "=" in segment:
        raise MalformedToken()
    last = _CANONICAL_LAST[size]
    if last is not None and segment[-1] not in last:
        raise MalformedToken()
    try:
        return binascii.a2b_base64(segment.encode("ascii").translate(_TO_STANDARD) + _PADDING[size],
                                   strict_mode=True)
    except ValueError:  # binascii.Error, or UnicodeEncodeError for a character outside ASCII
        raise MalformedToken() from None


def _json_object(data: bytes) -> dict[str, Any]:
    """A JSON object, decoded as `json.loads` would; whitespace around it is refused (ours never has it)."""
    try:
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        value, end = _SCAN_JSON(text, 0)
    except (StopIteration, ValueError, RecursionError):
        raise MalformedToken() from None
    if end != len(text) or not isinstance(value, dict):
        raise MalformedToken()
    return value


def _check_crit(header: dict[str, Any]) -> None:
    """PyJWT's rules: `crit` a non-empty list of understood names present in the header; no b64=false."""
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit:
            raise MalformedToken()
        for name in crit:
            if not isinstance(name, str) or name not in _SUPPORTED_CRIT or name not in header:
                raise MalformedToken()
    if header.get("b64", True) is False:
        raise MalformedToken()


def _check_registered(
    payload: dict[str, Any], *, audience: str, issuer: str | Sequence[str], required: Sequence[str]
) -> None:
    """PyJWT's claim checks in its order: required, `iss`, strict `aud`, then `sub` and `jti` strings."""
    for claim in required:
        if payload.get(claim) is None:
            raise MissingClaim()
    iss = payload.get("iss")
    if "iss" not in payload:
        raise MissingClaim()
    if not isinstance(iss, str) or (iss != issuer if isinstance(issuer, str) else iss not in issuer):
        raise WrongIssuer()
    aud = payload.get("aud")
    if not aud:
        raise MissingClaim()
    if not isinstance(aud, str) or aud != audience:
        raise WrongAudience()
    for name in ("sub", "jti"):
        if name in payload and not isinstance(payload[name], str):
            raise MalformedToken()
