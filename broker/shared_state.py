"""Sessions, rate counters and revocations in Redis, so that every broker behind a balancer agrees.

The same interface as the in-memory `SessionStore`, `RateLimiter` and `Revocations`; `BrokerCore`
picks these when a Redis URL is configured. Every Redis error becomes `SharedStateUnavailable` (503):
a login, a negotiation or a logout is refused, never served from stale or missing state.

The calls are synchronous: they are few (a login, a negotiation, a logout, a read of the revocations
when a gate's long poll starts or is woken), Redis answers on the local network in well under a
millisecond, and the client gives up after `timeout` seconds with no retry, so a dead Redis stalls
this broker at most that long per call. Only the wake-up of held polls is asynchronous: one
subscription per broker that blocks until a revocation is announced (`broker.revocation_watch`).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from llama_direct.refusals import SharedStateUnavailable
from llama_direct.shared_replay import REVOCATIONS_CHANNEL, REVOCATIONS_KEY, REVOKE_SCRIPT
from llama_direct.tokens import LEEWAY_SECONDS, MAX_TTL_SECONDS

if TYPE_CHECKING:
    import redis

SESSION_PREFIX = "ld:session:"
RATE_PREFIX = "ld:rate:"
LOAD_RATE_PREFIX = "ld:loads:"
SESSION_TTL_SECONDS = 7 * 24 * 3600
"""A session is forgotten a week after it was made (memory sessions last until a restart)."""
REVOCATION_HORIZON = MAX_TTL_SECONDS + LEEWAY_SECONDS
DEFAULT_TIMEOUT = 1.0

T = TypeVar("T")

_BUCKET_SCRIPT = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
updated = math.max(updated, now)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.max(1, math.ceil((1 - tokens) / rate)) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(updated))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return wait
"""
"""The in-memory `RateLimiter`'s token bucket, run atomically in Redis."""


def sync_client(url: str, timeout: float = DEFAULT_TIMEOUT) -> redis.Redis:
    """A client for `redis://` or `rediss://` (TLS) that fails fast, with no retry."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))


def _guarded(call: Callable[[], T]) -> T:
    from redis.exceptions import RedisError

    try:
        return call()
    except (RedisError, OSError):
        raise SharedStateUnavailable() from None


class RedisSessionStore:
    """Session id -> user. Only a hash of the id is stored, so Redis's contents log no one in."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @staticmethod
    def _key(session_id: str) -> str:
        return SESSION_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()

    def create(self, user: str) -> str:
        session_id = secrets.token_urlsafe(32)
        _guarded(lambda: self._redis.set(self._key(session_id), user, ex=SESSION_TTL_SECONDS))
        return session_id

    def user_for(self, session_id: str | None) -> str | None:
        if not session_id:
            return None
        value = _guarded(lambda: self._redis.get(self._key(session_id)))
        return value.decode() if isinstance(value, bytes) else None

    def drop(self, session_id: str | None) -> None:
        if session_id:
            _guarded(lambda: self._redis.delete(self._key(session_id)))


class RedisRateLimiter:
    """A token bucket per user, shared: `burst` at once, refilled at `per_minute` a minute."""

    def __init__(self, client: redis.Redis, per_minute: int, burst: int, prefix: str = RATE_PREFIX) -> None:
        """`prefix`: whose bucket this is (requests, or model loads), so two limits never share one."""
        if per_minute < 1 or burst < 1:
            raise ValueError("per_minute and burst must be positive")
        self._redis = client
        self._rate = per_minute / 60.0
        self._burst = burst
        self._prefix = prefix

    def acquire(self, user: str, now: float) -> int:
        """0 when allowed, else the whole seconds to wait (≥ 1)."""
        wait = _guarded(lambda: self._redis.eval(_BUCKET_SCRIPT, 1, self._prefix + user, self._rate, self._burst, now))
        return int(wait)


class RedisRevocations:
    """sub -> not-before, shared: a logout at any broker is announced on `REVOCATIONS_CHANNEL`, and
    every broker's watch wakes its gate's held poll (`broker.revocation_watch`)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def revoke(self, sub: str, not_before: float) -> None:
        second = math.ceil(not_before)
        _guarded(lambda: self._redis.eval(REVOKE_SCRIPT, 1, REVOCATIONS_KEY, sub, second, REVOCATIONS_CHANNEL))

    def prune(self, now: float) -> None:
        horizon = now - REVOCATION_HORIZON
        stale = [sub for sub, nb in self._entries().items() if nb <= horizon]
        if stale:
            _guarded(lambda: self._redis.hdel(REVOCATIONS_KEY, *stale))

    def to_dict(self) -> dict[str, Any]:
        return {"not_before": self._entries()}

    def _entries(self) -> dict[str, int]:
        raw = _guarded(lambda: self._redis.hgetall(REVOCATIONS_KEY))
        return {sub.decode(): int(nb) for sub, nb in raw.items()}  # type: ignore[union-attr]  # the sync client answers a dict, not an awaitable
