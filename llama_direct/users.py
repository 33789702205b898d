"""Named users: their names, limits and secrets, as records. Pure: no I/O, no clock (callers pass `now`).

A user is known by a stable id (`sub` in every grant), never by the name, so a rename or a name
reused after `users remove` cannot inherit anyone's grants, revocations or usage. Each user has two
secrets, shown once when made and stored only as digests: the **login token** (a login link's
`?token=`, also accepted as `Authorization: Bearer`, exactly as the owner's access token) and the
**API key** (`Authorization: Bearer` only, for scripts and SDKs). Both are 256 random bits, so a
plain SHA-256 is the right digest (no salt or slow hash is needed against a guess that cannot
succeed), and a lookup by digest reveals nothing a timing could exploit. A short fingerprint of the
digest names a secret in listings and logs.

Sessions carry the user's `generation` (`session_subject`), which `users rotate` moves on: a
browser logged in with an old link is logged out at its next request, on every broker.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace

from llama_direct.tokens import OWNER

Admit = Callable[[int], None]
"""Told how many users without secrets there are, inside a store's add transaction (`UserStore.add`):
raises to refuse the add. Here, beside the users, so that both stores name it without importing each other."""

MAX_NAME_LENGTH = 64
"""Code points, after normalisation: a name is shown in listings and logs, never a paragraph."""
_NAME_PUNCTUATION = frozenset("._-@+")
MAX_MODEL_NAME_LENGTH = 256
MAX_MODELS = 256
MAX_LIMIT = 10**12
"""Any bound above this is no bound: it keeps every counter an exact integer everywhere."""
LOGIN_TOKEN_PREFIX = "ldt_"
API_KEY_PREFIX = "ldk_"
"""Prefixes that say what a secret is (and let secret scanners find a leaked one)."""
SECRET_BYTES = 32
FINGERPRINT_LENGTH = 8
LOGIN = "login"
API_KEY = "api_key"
SECRET_KINDS = (LOGIN, API_KEY)
USER_ID_PREFIX = "u-"
_USER_ID = re.compile(r"u-[a-z2-7]{16}")
_SESSION_SEPARATOR = "#"


class UserError(ValueError):
    """A name, a limit or an operation that cannot be accepted; the message names what, never a secret."""


class NoSuchUser(UserError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no user named {name!r}")


class UserExists(UserError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a user named {name!r} exists already")


def normalise_name(raw: str) -> str:
    """NFKC, then casefold, then NFKC again (casefolding can undo it), trimmed: `Ann`, `ANN` and
    `Ａｎｎ` are one user. Letters, digits and `._-@+` only, 1 to `MAX_NAME_LENGTH` long, so a name
    never carries a control character, a space or a look-alike separator into a log or a listing."""
    name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold()).strip()
    if not name:
        raise UserError("a user name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise UserError(f"a user name is at most {MAX_NAME_LENGTH} characters")
    if not all(char.isalnum() or char in _NAME_PUNCTUATION for char in name):
        raise UserError("a user name takes letters, digits and . _ - @ + only")
    return name


@dataclass(frozen=True)
class Limits:
    """What a user may use; None: no bound. The owner has none of them."""

    models: tuple[str, ...] | None = None
    """The only models the user may be granted (and sees in `/v1/models`), in this order."""
    tokens_per_day: int | None = None
    tokens_per_minute: int | None = None
    streams: int | None = None
    max_tokens: int | None = None
    """The largest `max_tokens` a grant for this user names."""

    def __post_init__(self) -> None:
        for name in ("tokens_per_day", "tokens_per_minute", "streams", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_LIMIT):
                raise UserError(f"{name.replace('_', '-')} must be a whole number from 1 to {MAX_LIMIT}")
        if self.models is not None:
            if not isinstance(self.models, tuple) or not self.models or len(self.models) > MAX_MODELS:
                raise UserError(f"models must name 1 to {MAX_MODELS} models")
            for model in self.models:
                if not isinstance(model, str) or not model or len(model) > MAX_MODEL_NAME_LENGTH \
                        or "," in model or not model.isprintable() or model != model.strip():
                    raise UserError("a model name must be printable, without commas or surrounding spaces")
            if len(set(self.models)) != len(self.models):
                raise UserError("models names a model twice")

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def cap(self, max_tokens: int) -> int:
        """`max_tokens` held to this user's bound."""
        return max_tokens if self.max_tokens is None else min(max_tokens, self.max_tokens)


LIMIT_FIELDS = ("models", "tokens_per_day", "tokens_per_minute", "streams", "max_tokens")


def parse_models(text: str) -> tuple[str, ...]:
    """`--models A,B` as the tuple `Limits` takes (checked there)."""
    return tuple(part.strip() for part in text.split(","))


def with_limits(limits: Limits, changes: dict[str, object]) -> Limits:
    """`limits` with each named field replaced (None clears it); an unknown field is an error."""
    unknown = set(changes) - set(LIMIT_FIELDS)
    if unknown:
        raise UserError(f"no such limit: {sorted(unknown)[0]}")
    return replace(limits, **changes)  # type: ignore[arg-type]  # each field is checked by Limits itself


@dataclass(frozen=True)
class User:
    id: str
    """Stable, random, never reused: the grants' `sub`."""
    name: str
    limits: Limits
    created: float
    generation: int = 1
    """Moved on by every rotation: sessions made before it name an older one and are refused."""

    def __post_init__(self) -> None:
        if not is_user_id(self.id):
            raise UserError("a user id is u- and 16 letters a-z or digits 2-7")
        if normalise_name(self.name) != self.name:
            raise UserError("a user's name must be normalised")
        if isinstance(self.generation, bool) or not isinstance(self.generation, int) or self.generation < 1:
            raise UserError("generation must be a positive integer")
        if not math.isfinite(self.created):
            raise UserError("created must be a time")


def is_user_id(value: str) -> bool:
    return bool(_USER_ID.fullmatch(value))


def new_user_id() -> str:
    """80 random bits in base32: never `OWNER`, never a name, unique without asking the store."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return USER_ID_PREFIX + "".join(secrets.choice(alphabet) for _ in range(16))


def new_user(name: str, limits: Limits, now: float) -> User:
    return User(id=new_user_id(), name=normalise_name(name), limits=limits, created=now)


@dataclass(frozen=True)
class SecretRecord:
    """What is stored of one secret: its digest, what it is, and the fingerprint shown for it."""

    digest: str
    kind: str
    fingerprint: str


@dataclass(frozen=True)
class NewSecrets:
    """A user's two secrets, in clear: printed once by `users add`/`rotate`, then only their records."""

    login_token: str
    api_key: str

    def records(self) -> tuple[SecretRecord, SecretRecord]:
        return (secret_record(self.login_token, LOGIN), secret_record(self.api_key, API_KEY))


def new_secrets() -> NewSecrets:
    return NewSecrets(login_token=LOGIN_TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES),
                      api_key=API_KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES))


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def secret_record(secret: str, kind: str) -> SecretRecord:
    digest = secret_digest(secret)
    return SecretRecord(digest=digest, kind=kind, fingerprint=digest[:FINGERPRINT_LENGTH])


def looks_like_user_secret(presented: str) -> bool:
    """Only a value with a user secret's prefix is looked up: anything else costs the store nothing."""
    return presented.startswith((LOGIN_TOKEN_PREFIX, API_KEY_PREFIX)) and len(presented) < 256


def secret_kind(presented: str) -> str:
    """What a user secret claims to be by its prefix (the store's record must agree)."""
    return LOGIN if presented.startswith(LOGIN_TOKEN_PREFIX) else API_KEY


@dataclass(frozen=True)
class Credential:
    """A presented secret, found: whose, and which of the two it is."""

    user: User
    kind: str


@dataclass(frozen=True)
class Listed:
    """One row of `users list`: the user and each secret's fingerprint (never a secret)."""

    user: User
    fingerprints: dict[str, str]


def session_subject(user: User) -> str:
    """What a user's session stores: the id and the generation, so a rotation ends old sessions."""
    return f"{user.id}{_SESSION_SEPARATOR}{user.generation}"


def parse_session_subject(subject: str) -> tuple[str, int] | None:
    """(user id, generation) from `session_subject`, or None for the owner's or anything else."""
    user_id, separator, generation = subject.partition(_SESSION_SEPARATOR)
    if subject == OWNER or not separator or not is_user_id(user_id) or not generation.isdigit():
        return None
    return user_id, int(generation)
