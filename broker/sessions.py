"""Who is asking: the access token, login sessions, and the per-user issuance rate.

Pure: no I/O and no clock; callers pass `now`. Sessions are kept by a digest of their id, never the
id itself, so what is stored (`broker.session_file` saves them in the data dir, so a restart logs
nobody out) cannot be replayed as a cookie. The counters live in memory only.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from llama_direct.tokens import OWNER

COOKIE_NAME = "llama_direct_session"
DEFAULT_USER = OWNER
"""The embedded deployment has one user: whoever holds the access token."""
MAX_SESSIONS = 1024
"""Each login adds a session; the oldest go first, so repeated logins cannot grow memory forever."""
LOGIN_FAILURE_BURST = 10
LOGIN_FAILURES_PER_MINUTE = 6
"""Wrong access tokens allowed per client address: ten at once, then one every ten seconds."""
MAX_LIMITED_KEYS = 4096
"""Buckets kept per limiter: the least recently seen key goes first, so many addresses cannot grow memory."""


class AccessTokens:
    """Access token -> user. Every comparison is constant-time, so timing cannot reveal a prefix."""

    def __init__(self, tokens: dict[str, str]) -> None:
        if not tokens or not all(tokens):
            raise ValueError("at least one non-empty access token is needed")
        self._tokens = tuple((token.encode(), user) for token, user in tokens.items())

    @classmethod
    def single(cls, token: str, user: str = DEFAULT_USER) -> AccessTokens:
        return cls({token: user})

    @classmethod
    def none(cls) -> AccessTokens:
        """No token at all: a broker mounted in a host app, whose users log in to the host."""
        tokens = cls.__new__(cls)
        tokens._tokens = ()
        return tokens

    def user_for(self, presented: str | None) -> str | None:
        if not presented:
            return None
        candidate = presented.encode("utf-8", "replace")
        found = None
        for token, user in self._tokens:
            if hmac.compare_digest(candidate, token) and found is None:
                found = user
        return found


def session_digest(session_id: str) -> str:
    """What a session is kept by: a SHA-256 of its id (256 random bits, so no salt is needed)."""
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class SessionStore:
    """Session id (the cookie's value) -> user, kept by the id's digest, oldest first."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, kept: Mapping[str, str] | None = None) -> None:
        """`kept`: digest -> user, oldest first, as `kept()` gave them (a restart's saved sessions)."""
        self._users: dict[str, str] = dict(kept or {})
        self._max = max_sessions
        self._evict()

    def create(self, user: str) -> str:
        session_id = secrets.token_urlsafe(32)
        self._users[session_digest(session_id)] = user
        self._evict()
        return session_id

    def user_for(self, session_id: str | None) -> str | None:
        if not session_id:
            return None
        return self._users.get(session_digest(session_id))

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._users.pop(session_digest(session_id), None)

    def kept(self) -> dict[str, str]:
        """digest -> user, oldest first: what may be written down (no id can be rebuilt from it)."""
        return dict(self._users)

    def _evict(self) -> None:
        while len(self._users) > self._max:
            del self._users[next(iter(self._users))]

    def __len__(self) -> int:
        return len(self._users)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per user: `burst` at once, refilled at `per_minute` a minute."""

    def __init__(self, per_minute: int, burst: int, max_keys: int = MAX_LIMITED_KEYS) -> None:
        if per_minute < 1 or burst < 1:
            raise ValueError("per_minute and burst must be positive")
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}
        self._max_keys = max_keys

    def acquire(self, user: str, now: float) -> int:
        """Take one from `user`'s bucket: 0 when allowed, else the whole seconds to wait (≥ 1)."""
        bucket = self._buckets.pop(user, None)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
        self._buckets[user] = bucket
        while len(self._buckets) > self._max_keys:
            del self._buckets[next(iter(self._buckets))]
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = max(bucket.updated, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self._rate))

    def refund(self, user: str) -> None:
        """Give back one taken for work that never happened (never past `burst`)."""
        bucket = self._buckets.get(user)
        if bucket is not None:
            bucket.tokens = min(self._burst, bucket.tokens + 1.0)
