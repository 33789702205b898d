"""The replay cache several gates share, in Redis: a token spent at gate A is refused at gate B.

`spend` is one Redis transaction (`MULTI`): `INFO server`, then `SET ld:jti:<jti> NX PXAT <exp +
leeway>` (a counter script when a grant allows more than one use). Both run on the same Redis run, so
the `INFO` tells how long the store has remembered what it holds.

**A Redis that lost its data.** A Redis restarted without its data (or with an older snapshot) would
forget spent tokens and make them good again. So a token issued before Redis's current run started
(`server_time_usec` minus `uptime_in_seconds`, from the same transaction, plus the leeway that covers
clock skew between brokers and Redis) is refused as issued before a restart: clients ask for a fresh
one. No persistence setting is required; tokens live at most 300 s, so a restart costs one retry.

**Redis down.** Any error reaching Redis is `SharedStateUnavailable` (503): the check is never
skipped. The client is built with short timeouts and no retries, so a dead Redis costs a request at
most `timeout` seconds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from llama_direct.refusals import IssuedBeforeGateStart, SharedStateUnavailable, TokenSpent
from llama_direct.tokens import LEEWAY_SECONDS, Claims

if TYPE_CHECKING:
    import redis.asyncio

KEY_PREFIX = "ld:jti:"
DEFAULT_TIMEOUT = 1.0

_SPEND_SCRIPT = """
local left = redis.call('INCR', KEYS[1])
if left == 1 then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
if left <= tonumber(ARGV[1]) then return 1 end
return 0
"""
"""Uses counted up to the grant's `uses`; the key is forgotten with the token."""

REVOCATIONS_KEY = "ld:revocations"
"""sub -> not-before second, shared by every broker (`broker.shared_state.RedisRevocations`) and
written by `llama-direct users` too, when it removes or rotates a user (`llama_direct.user_store_redis`)."""
REVOCATIONS_CHANNEL = "ld:revocations:changed"
"""Pub/sub: a revocation that changed `REVOCATIONS_KEY` is announced here, and every broker's
`RevocationWatch` wakes its gate's held poll. A Redis ACL user needs the channel (`&ld:revocations:changed`)."""
REVOKE_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PUBLISH', ARGV[3], '1')
end
return 1
"""
"""KEYS[1] = `REVOCATIONS_KEY`; ARGV = sub, not-before second, `REVOCATIONS_CHANNEL`. A later
revocation never loosens an earlier one, whichever writer came first; one that changed something is
announced in the same step, so no broker can miss it while its subscription is up."""


def async_client(url: str, timeout: float = DEFAULT_TIMEOUT) -> redis.asyncio.Redis:
    """A client for `redis://` or `rediss://` (TLS), failing fast: no retry hides a dead Redis."""
    import redis.asyncio
    from redis.asyncio.retry import Retry  # the asyncio client's own: redis 8 warns at the synchronous one
    from redis.backoff import NoBackoff

    return redis.asyncio.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def register_url(url: str) -> None:
    """Scrub the URL, and its password on its own, from every log record: it may carry one."""
    from urllib.parse import urlsplit

    from llama_direct.redaction import register_secret

    register_secret(url)
    password = urlsplit(url).password
    if password and len(password) >= 8:
        register_secret(password)


def run_started_at(info: dict[str, Any]) -> float:
    """When this Redis run began, by Redis's own clock, from `INFO server`."""
    return int(info["server_time_usec"]) / 1e6 - int(info["uptime_in_seconds"])


def first_trusted_iat(run_start: float) -> int:
    """The first `iat` certainly after the run began: `uptime_in_seconds` is whole seconds, and the
    leeway covers brokers whose clocks run ahead of Redis's."""
    return math.floor(run_start) + 1 + LEEWAY_SECONDS


class RedisReplayStore:
    """`spend(claims)`: one use of the token, shared by every gate on this Redis, or a refusal."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    async def spend(self, claims: Claims) -> None:
        """Raise `TokenSpent`, `IssuedBeforeGateStart` (issued before Redis's run) or `SharedStateUnavailable`."""
        from redis.exceptions import RedisError

        key = KEY_PREFIX + claims.jti
        forget_at_ms = (claims.exp + LEEWAY_SECONDS) * 1000
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.info("server")
                if claims.grant.uses == 1:
                    pipe.set(key, b"1", nx=True, pxat=forget_at_ms)
                else:
                    pipe.eval(_SPEND_SCRIPT, 1, key, claims.grant.uses, forget_at_ms)
                info, spent = await pipe.execute()
        except (RedisError, OSError):
            raise SharedStateUnavailable() from None
        if claims.iat < first_trusted_iat(run_started_at(info)):
            raise IssuedBeforeGateStart()
        if not spent:
            raise TokenSpent()

    async def close(self) -> None:
        await self._redis.aclose()
