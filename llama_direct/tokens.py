"""Mint and verify the lane's credentials (compact JWTs, RFC 7519).

Pure: no I/O and no clock. Callers pass `now`, so the gate, the broker and the tests agree on time
to the second, and every boundary is a unit test. PyJWT mints; `llama_direct.jws`, a small core
over `cryptography` held to PyJWT's refusals, checks the signature and the `iss`/`aud` claims (it
is four times cheaper, issue 18); the time claims are checked here, with the caller's clock.

The key that checks a token is chosen by the header's `kid`, and the only algorithm accepted is the
one that key was published with: a token cannot pick its own algorithm (no `none`, no HS256 made
with a public key as the HMAC secret).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import jwt

from llama_direct import jws
from llama_direct.lanes import SCOPES
from llama_direct.refusals import (
    IssuedBeforeGateStart,
    MalformedToken,
    MissingToken,
    TokenExpired,
    TokenNotYetValid,
)

if TYPE_CHECKING:
    from llama_direct.keys import KeyChecks

OWNER = "local"
"""The `sub` of the one who holds the access token (the box's owner, who runs the bench): the broker
names that user so, and the gate leaves it uncapped where other users' streams are capped."""
LEEWAY_SECONDS = 5
DEFAULT_TTL_SECONDS = 30
MAX_TTL_SECONDS = 300
ALGORITHMS = jws.ALGORITHMS
MAX_TOKEN_LENGTH = 8192
"""Far above any token `mint` makes; refused before any decoding, so junk costs nothing."""
REQUIRED_CLAIMS = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti", "scope", "grant")
MAX_SYSTEM_PROMPT_CHARS = 4096
"""A pinned system prompt, as the token's JSON spells it (non-ASCII escaped): so a token that pins one
stays within `MAX_TOKEN_LENGTH` once base64 has grown it by a third."""



@dataclass(frozen=True)
class GrantField:
    """One claim of the grant, declared once, with what enforces it at each enforcement point.

    Each name is `module:function`: `gate` the Python gate's check, `haproxy` the HAProxy renderer's
    rule (in `llama_launcher.haproxy_grant`, which refuses to render a config for a field it has no
    rule for). `tests/unit/test_grant_fields.py` walks every field: each must be a field of `Grant`,
    and each enforcer must exist and read it, so a claim added without both fails there.
    """

    name: str
    required: bool
    gate: str

    @property
    def haproxy(self) -> str:
        """The HAProxy rule: always `haproxy_grant`'s `<name>_rules`, one function per field."""
        return f"llama_launcher.haproxy_grant:{self.name}_rules"


GRANT_FIELDS: tuple[GrantField, ...] = (
    GrantField("routes", True, gate="llama_launcher.gate.scope:_granted_route"),
    GrantField("model", True, gate="llama_launcher.gate.shaping:_check_model"),
    GrantField("max_tokens", True, gate="llama_launcher.gate.shaping:shape_chat_body"),
    GrantField("uses", False, gate="llama_launcher.gate.core:Gate.spend"),
    GrantField("origin", False, gate="llama_launcher.gate.scope:_check_origin"),
    GrantField("conversation_id", False, gate="llama_launcher.gate.scope:_check_conversation_header"),
    GrantField("autoload", False, gate="llama_launcher.gate.core:Gate.load_target"),
    GrantField("system_prompt", False, gate="llama_launcher.gate.pinned:pinned_prompt"),
    GrantField("streams", False, gate="llama_launcher.gate.stream_watch:StreamWatch.open"),
)
"""Every claim of the grant; `Grant`'s fields, in its order."""

_GRANT_REQUIRED = frozenset(field.name for field in GRANT_FIELDS if field.required)
_GRANT_FIELDS = frozenset(field.name for field in GRANT_FIELDS)


@dataclass(frozen=True)
class Grant:
    """What one token may do at the gate: the `grant` claim."""

    routes: tuple[tuple[str, str], ...]
    model: str
    max_tokens: int
    uses: int = 1
    origin: str | None = None
    conversation_id: str | None = None
    autoload: bool = True
    """Whether the request may load its model when a router has not loaded it (a load costs the box)."""
    system_prompt: str | None = None
    """A system prompt pinned by the host app or the operator: the gate puts it first and refuses the
    client's own (`llama_launcher.gate.pinned`). Not a secret: the token carries it in the clear."""
    streams: int | None = None
    """The streams the grant's `sub` may have at once on a gate (its user's `--streams`); None: the gate's
    own `--streams-per-user` applies. A user's own limit, so it may be above or below the gate's."""

    def __post_init__(self) -> None:
        # Plain loops, not all(genexpr): a grant is rebuilt on every lane request (issue 18, P5).
        if not isinstance(self.routes, tuple) or not self.routes:
            raise ValueError("routes must be a non-empty tuple of (method, path) pairs")
        for route in self.routes:
            if not (isinstance(route, tuple) and len(route) == 2 and isinstance(route[0], str)
                    and isinstance(route[1], str)):
                raise ValueError("routes must be a non-empty tuple of (method, path) pairs")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model must be a non-empty string")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError("max_tokens must be a positive integer")
        if not _is_int(self.uses) or self.uses < 1:
            raise ValueError("uses must be a positive integer")
        if self.streams is not None and (not _is_int(self.streams) or self.streams < 1):
            raise ValueError("streams must be a positive integer or None")
        if not isinstance(self.autoload, bool):
            raise ValueError("autoload must be true or false")
        for optional in (self.origin, self.conversation_id):
            if optional is not None and (not isinstance(optional, str) or not optional):
                raise ValueError("origin and conversation_id must be non-empty strings or None")
        if self.system_prompt is not None and not is_system_prompt(self.system_prompt):
            raise ValueError(f"system_prompt must be a non-empty string of at most {MAX_SYSTEM_PROMPT_CHARS} "
                             "characters as JSON")

    def to_claim(self) -> dict[str, Any]:
        claim: dict[str, Any] = {
            "routes": [list(route) for route in self.routes],
            "model": self.model,
            "max_tokens": self.max_tokens,
            "uses": self.uses,
        }
        if self.origin is not None:
            claim["origin"] = self.origin
        if self.conversation_id is not None:
            claim["conversation_id"] = self.conversation_id
        if not self.autoload:  # absent means true, so a grant without the limit stays as it was
            claim["autoload"] = False
        if self.system_prompt is not None:
            claim["system_prompt"] = self.system_prompt
        if self.streams is not None:  # absent: the gate's own cap, so a grant without it stays as it was
            claim["streams"] = self.streams
        return claim

    @classmethod
    def from_claim(cls, value: object) -> Grant:
        """Rebuild a grant; an unknown field is refused, since an old gate must not drop a new limit."""
        if not isinstance(value, dict) or not _GRANT_REQUIRED <= value.keys() <= _GRANT_FIELDS:
            raise MalformedToken()
        routes = value["routes"]
        if not isinstance(routes, list):
            raise MalformedToken()
        pairs = []
        for route in routes:
            if not isinstance(route, list):
                raise MalformedToken()
            pairs.append(tuple(route))
        try:
            return cls(
                routes=tuple(pairs),
                model=value["model"],
                max_tokens=value["max_tokens"],
                uses=value.get("uses", 1),
                origin=value.get("origin"),
                conversation_id=value.get("conversation_id"),
                autoload=value.get("autoload", True),
                system_prompt=value.get("system_prompt"),
                streams=value.get("streams"),
            )
        except ValueError:
            raise MalformedToken() from None


@dataclass(frozen=True)
class Claims:
    """A verified token's claims; `scope` is the RFC 8693 space-separated string."""

    iss: str
    aud: str
    sub: str
    iat: int
    nbf: int
    exp: int
    jti: str
    scope: str
    grant: Grant

    def to_payload(self) -> dict[str, Any]:
        """The JWT payload: every required claim, in `REQUIRED_CLAIMS` order, the grant as its claim."""
        payload: dict[str, Any] = {name: getattr(self, name) for name in REQUIRED_CLAIMS}
        payload["grant"] = self.grant.to_claim()
        return payload


class Signer(Protocol):
    """What `mint` needs of a key: the broker's `SigningKey` is one; the contract never holds one."""

    @property
    def kid(self) -> str:
        """Named in the token's header, so the gate picks the public key that checks it."""

    @property
    def algorithm(self) -> str:
        """One of `ALGORITHMS`; the token's `alg`."""

    @property
    def private_key(self) -> Any:
        """What PyJWT signs with; `Any` because the contract never names a private key type."""


@dataclass(frozen=True)
class MintedToken:
    token: str
    claims: Claims


def new_jti() -> str:
    """A grant's id: 128 random bits."""
    return secrets.token_urlsafe(16)


def mint(
    key: Signer,
    *,
    issuer: str,
    audience: str,
    subject: str,
    scope: str,
    grant: Grant,
    now: float,
    ttl: int = DEFAULT_TTL_SECONDS,
    jti: str | None = None,
) -> MintedToken:
    """Sign a token valid from the whole second `now` falls in, for `ttl` seconds at most. `jti` is
    a fresh random id unless the caller made one first (`new_jti`: a budget reserved under it)."""
    if not _is_int(ttl) or not 1 <= ttl <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl must be between 1 and {MAX_TTL_SECONDS} seconds")
    if key.algorithm not in ALGORITHMS:
        raise ValueError("the signing key's algorithm is not allowed")
    if not scope or any(part not in SCOPES for part in scope.split(" ")):
        raise ValueError(f"scope must be made of {', '.join(SCOPES)}")
    if not (issuer and audience and subject):
        raise ValueError("issuer, audience and subject must be non-empty")
    iat = math.floor(now)
    claims = Claims(
        iss=issuer,
        aud=audience,
        sub=subject,
        iat=iat,
        nbf=iat,
        exp=iat + ttl,
        jti=jti if jti is not None else new_jti(),
        scope=scope,
        grant=grant,
    )
    token = jwt.encode(
        claims.to_payload(), key.private_key, algorithm=key.algorithm, headers={"kid": key.kid}
    )
    return MintedToken(token=token, claims=claims)


def verify(
    token: str,
    *,
    keys: KeyChecks,
    audience: str,
    issuer: str | Sequence[str],
    now: float,
    leeway: int = LEEWAY_SECONDS,
    not_issued_before: int | None = None,
) -> Claims:
    """Check a token completely (except uses and revocation, which need state) or raise a `TokenRefusal`.

    `issuer` is one accepted `iss`, or several when brokers share an audience.
    `not_issued_before` is the second the gate started: its replay cache is empty, so a token
    issued earlier might already have been spent.
    """
    if not 0 <= leeway <= LEEWAY_SECONDS:
        raise ValueError(f"leeway must be between 0 and {LEEWAY_SECONDS} seconds")
    if not isinstance(token, str):
        raise MalformedToken()
    if not token:
        raise MissingToken()
    if len(token) > MAX_TOKEN_LENGTH:
        raise MalformedToken()
    payload = jws.decode(
        token, keys, audience=audience, issuer=issuer, required=REQUIRED_CLAIMS
    )
    claims = _claims_from(payload)
    if claims.exp <= now - leeway:
        raise TokenExpired()
    if claims.nbf > now + leeway or claims.iat > now + leeway:
        raise TokenNotYetValid()
    if not_issued_before is not None and claims.iat < not_issued_before:
        raise IssuedBeforeGateStart()
    return claims


def _claims_from(payload: dict[str, Any]) -> Claims:
    # Plain loops, not all(genexpr): this runs on every lane request (issue 18, P5).
    for text in (payload["iss"], payload["aud"], payload["sub"], payload["jti"], payload["scope"]):
        if not isinstance(text, str) or not text:
            raise MalformedToken()
    for time in (payload["iat"], payload["nbf"], payload["exp"]):
        if not _is_int(time):
            raise MalformedToken()
    if payload["exp"] - payload["iat"] > MAX_TTL_SECONDS:
        raise MalformedToken()
    return Claims(
        iss=payload["iss"],
        aud=payload["aud"],
        sub=payload["sub"],
        iat=payload["iat"],
        nbf=payload["nbf"],
        exp=payload["exp"],
        jti=payload["jti"],
        scope=payload["scope"],
        grant=Grant.from_claim(payload["grant"]),
    )


def is_system_prompt(value: object) -> bool:
    """Whether `value` can be a grant's pinned system prompt: a non-empty string within the bound."""
    if not isinstance(value, str) or not value or len(value) > MAX_SYSTEM_PROMPT_CHARS:
        return False
    return len(json.dumps(value)) - 2 <= MAX_SYSTEM_PROMPT_CHARS


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
