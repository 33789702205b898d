"""Another broker's JWKS, pulled over TLS: which URL, and what an answer is worth (no I/O here).

`serve --issuer-jwks ISSUER=https://host/.well-known/jwks.json` names where broker ISSUER publishes
its public keys. Every key read from that URL is bound to ISSUER (`PublicKeySet.issuers`): it
verifies only tokens whose `iss` is ISSUER, so a broker, or whoever controls its URL, can sign for
itself and for no other broker, whatever kids it chooses. ISSUER must be an accepted `--issuer` and
not the gate's own broker (whose keys come over the control socket).

The answer is bounded before it is read (`MAX_JWKS_BYTES`, `MAX_JWKS_KEYS`) and read strictly: a
document that is not a JWKS, or holds no usable key, is a failed pull (the gate keeps what it had,
and never empties the set); inside a good one, a key
that is not for signatures, not Ed25519/EdDSA or P-256/ES256 with its `alg` stated, broken, a
second use of a kid, or one that carries private members, is skipped with a reason, and the rest
are kept. Reasons name the entry's position, never its text, which the remote chose.

The URL is not a secret, but logs name its host only (`JwksSource.host`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from llama_direct.ids import ID_PATTERN
from llama_direct.keys import PublicKey, PublicKeySet, public_key_from_jwk

MAX_JWKS_BYTES = 64 * 1024
"""Far above a broker's JWKS (a few keys of ~200 bytes); the body is refused past it, unread."""
MAX_JWKS_KEYS = 32
"""A broker publishes its current, staged and retired keys: a handful; more is not a broker's JWKS."""
MAX_SOURCES = 16
MAX_ETAG_LENGTH = 256
MEDIA_TYPES = frozenset({"application/json", "application/jwk-set+json"})
_KINDS = {("OKP", "Ed25519"): "EdDSA", ("EC", "P-256"): "ES256"}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class JwksError(ValueError):
    """A pull that yields nothing: the message is a fixed phrase, never the remote's text."""


@dataclass(frozen=True)
class JwksSource:
    """One `--issuer-jwks`: the issuer its keys may sign for, and the https URL they come from."""

    issuer: str
    url: str
    host: str = field(init=False)
    """`hostname[:port]`: all that a log line or `/health` names of the URL."""

    def __post_init__(self) -> None:
        if not ID_PATTERN.fullmatch(self.issuer):
            raise ValueError(f"--issuer-jwks: {self.issuer!r} is not an issuer name")
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError:
            raise ValueError(f"--issuer-jwks {self.issuer}: not a URL") from None
        if parts.scheme != "https":
            raise ValueError(f"--issuer-jwks {self.issuer}: only https:// URLs (keys must not travel in clear text)")
        if not parts.hostname:
            raise ValueError(f"--issuer-jwks {self.issuer}: the URL names no host")
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise ValueError(f"--issuer-jwks {self.issuer}: the URL may not hold credentials or a #fragment")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        object.__setattr__(self, "host", f"{host}:{port}" if port is not None else host)

    @classmethod
    def parse(cls, text: str) -> JwksSource:
        """`ISSUER=https://…`, as given on the command line."""
        issuer, sep, url = text.partition("=")
        if not sep or not issuer or not url:
            raise ValueError("--issuer-jwks: expected ISSUER=https://host/path")
        return cls(issuer, url)


def check_sources(sources: Sequence[JwksSource], accepted: Sequence[str]) -> None:
    """Each source names an accepted issuer other than the gate's own broker (the first), once."""
    if len(sources) > MAX_SOURCES:
        raise ValueError(f"--issuer-jwks: at most {MAX_SOURCES} sources")
    seen: set[str] = set()
    for source in sources:
        if source.issuer not in accepted:
            raise ValueError(f"--issuer-jwks {source.issuer}: not one of the accepted --issuer names")
        if source.issuer == accepted[0]:
            raise ValueError(f"--issuer-jwks {source.issuer}: that is this broker's own issuer; "
                             "its keys come from the broker itself")
        if source.issuer in seen:
            raise ValueError(f"--issuer-jwks {source.issuer}: given twice")
        seen.add(source.issuer)


def own_issuers(accepted: Sequence[str], sources: Sequence[JwksSource]) -> frozenset[str] | None:
    """What the gate's own broker's keys may sign for: every accepted issuer without a JWKS URL.

    Without sources, None (any accepted issuer): several brokers sharing one `--signing-key-file`
    publish the same key, which the gate's own broker's JWKS holds.
    """
    if not sources:
        return None
    return frozenset(accepted) - {source.issuer for source in sources}


def conditional_headers(etag: str | None) -> dict[str, str]:
    """What a pull sends: the validator of the last good answer, and no compression (bounded bytes)."""
    headers = {"Accept": "application/jwk-set+json, application/json", "Accept-Encoding": "identity"}
    if etag is not None:
        headers["If-None-Match"] = etag
    return headers


@dataclass(frozen=True)
class Fresh:
    """A 200 with a JWKS: its keys bound to the source's issuer, its validator, what was skipped."""

    keys: PublicKeySet
    etag: str | None
    skipped: tuple[str, ...] = ()


NOT_MODIFIED = "not-modified"


def check_head(status: int, headers: Mapping[str, str], etag: str | None) -> str | None:
    """Before the body is read: NOT_MODIFIED, None to read it, or a `JwksError`.

    `headers` are lower-cased names; a 304 counts only when a validator was sent, and a redirect
    is not followed (it would be a second URL nobody configured).
    """
    if status == 304:
        if etag is None:
            raise JwksError("a 304 answer to an unconditional request")
        return NOT_MODIFIED
    if status != 200:
        raise JwksError(f"answered {status}" if 100 <= status <= 599 else "answered a bad status")
    media = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise JwksError("the answer is not JSON")
    if headers.get("content-encoding", "identity").strip().lower() != "identity":
        raise JwksError("the answer is compressed")
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_JWKS_BYTES):
        raise JwksError(f"the answer is larger than {MAX_JWKS_BYTES} bytes")
    return None


def read_answer(body: bytes, headers: Mapping[str, str], issuer: str) -> Fresh:
    """A 200's body (at most `MAX_JWKS_BYTES`, which the shell enforced as it read)."""
    if len(body) > MAX_JWKS_BYTES:
        raise JwksError(f"the answer is larger than {MAX_JWKS_BYTES} bytes")
    keys, skipped = read_jwks(body, issuer)
    return Fresh(keys, _validator(headers.get("etag")), skipped)


def read_jwks(body: bytes, issuer: str) -> tuple[PublicKeySet, tuple[str, ...]]:
    """The signature keys of a JWKS document, bound to `issuer`, and why each other entry was skipped."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise JwksError("the answer is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError("the answer is not a JWKS (an object with a list of keys)")
    if len(entries) > MAX_JWKS_KEYS:
        raise JwksError(f"the JWKS has more than {MAX_JWKS_KEYS} keys")
    keys: dict[str, tuple[str, PublicKey]] = {}
    skipped: list[str] = []
    for n, entry in enumerate(entries):
        reason = _unusable(entry, keys)
        if reason is not None:
            skipped.append(f"key {n}: {reason}")
            continue
        try:
            keys[entry["kid"]] = (entry["alg"], public_key_from_jwk(entry))
        except ValueError:
            skipped.append(f"key {n}: not a valid public key")
    if not keys:  # a broker always publishes the key it signs with: empty is broken, not a rotation
        raise JwksError(f"the JWKS holds no usable key ({len(skipped)} skipped)")
    return PublicKeySet(MappingProxyType(keys), frozenset({issuer})), tuple(skipped)


def _unusable(entry: Any, keys: Mapping[str, object]) -> str | None:
    """Why this entry cannot verify a token, or None; checked in the order a reader would ask."""
    if not isinstance(entry, dict):
        return "not an object"
    if _PRIVATE_MEMBERS & entry.keys():
        return "it holds private key members (never load or publish those)"
    if entry.get("use", "sig") != "sig":
        return "not a signature key (use)"
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "not a verification key (key_ops)"
    kty, crv = entry.get("kty"), entry.get("crv")
    algorithm = _KINDS.get((kty, crv)) if isinstance(kty, str) and isinstance(crv, str) else None
    if algorithm is None:
        return "not an Ed25519 or P-256 key"
    if entry.get("alg") != algorithm:
        return f"its alg is not {algorithm} (each key must name its one algorithm)"
    kid = entry.get("kid")
    if not isinstance(kid, str) or not 1 <= len(kid) <= 128:
        return "no kid, or a kid longer than 128 characters"
    if kid in keys:
        return "its kid is used by an earlier key"
    return None


def _validator(value: str | None) -> str | None:
    """An ETag worth sending back: printable ASCII of a sane length; anything else is not kept."""
    if value is None or not 1 <= len(value) <= MAX_ETAG_LENGTH:
        return None
    if not all(0x21 <= ord(c) <= 0x7E for c in value):
        return None
    return value
