"""Redis-backed state against a real redis-server: the replay cache, sessions, rate counters, revocations."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis_server import RedisServer

from broker.shared_state import RedisRateLimiter, RedisRevocations, RedisSessionStore, sync_client
from broker.signing_keys import SigningKey
from llama_direct.refusals import IssuedBeforeGateStart, SharedStateUnavailable, TokenSpent
from llama_direct.shared_replay import RedisReplayStore, async_client
from llama_direct.tokens import LEEWAY_SECONDS, Claims, Grant, mint

KEY = SigningKey.generate("ES256")


def _claims(now: float, uses: int = 1) -> Claims:
    grant = Grant(routes=(("POST", "/v1/chat/completions"),), model="m", max_tokens=8, uses=uses)
    return mint(KEY, issuer="b", audience="g", subject="u", scope="chat", grant=grant, now=now).claims


async def _spend(url: str, claims: Claims) -> BaseException | None:
    store = RedisReplayStore(async_client(url))
    try:
        await store.spend(claims)
        return None
    except Exception as error:
        return error
    finally:
        await store.close()


def _settle(redis: RedisServer) -> float:
    """A time certainly after the run started plus the leeway, as tokens minted now would be."""
    time.sleep(LEEWAY_SECONDS + 2)
    return time.time()


@pytest.mark.slow
def test_a_token_is_spent_once_across_stores_and_uses_are_counted(redis_server: RedisServer) -> None:
    now = _settle(redis_server)
    claims = _claims(now)
    assert asyncio.run(_spend(redis_server.url, claims)) is None
    assert isinstance(asyncio.run(_spend(redis_server.url, claims)), TokenSpent)
    twice = _claims(now, uses=2)
    results = [asyncio.run(_spend(redis_server.url, twice)) for _ in range(3)]
    assert results[:2] == [None, None] and isinstance(results[2], TokenSpent)


@pytest.mark.slow
def test_redis_down_is_503_and_a_restart_refuses_older_tokens(redis_server: RedisServer) -> None:
    now = _settle(redis_server)
    spent, unspent = _claims(now), _claims(now)
    assert asyncio.run(_spend(redis_server.url, spent)) is None
    redis_server.stop()
    assert isinstance(asyncio.run(_spend(redis_server.url, unspent)), SharedStateUnavailable)
    redis_server.start()
    # The restarted Redis forgot `spent`: it must not become good again, nor may anything older.
    assert isinstance(asyncio.run(_spend(redis_server.url, spent)), IssuedBeforeGateStart)
    assert isinstance(asyncio.run(_spend(redis_server.url, unspent)), IssuedBeforeGateStart)
    fresh = _claims(_settle(redis_server))
    assert asyncio.run(_spend(redis_server.url, fresh)) is None


def test_sessions_rates_and_revocations_are_shared_between_brokers(redis_server: RedisServer) -> None:
    a, b = sync_client(redis_server.url), sync_client(redis_server.url)
    session = RedisSessionStore(a).create("alice")
    assert RedisSessionStore(b).user_for(session) == "alice"
    assert RedisSessionStore(b).user_for("forged") is None
    RedisSessionStore(b).drop(session)
    assert RedisSessionStore(a).user_for(session) is None

    now = 1_700_000_000.0
    limit_a, limit_b = RedisRateLimiter(a, per_minute=60, burst=2), RedisRateLimiter(b, per_minute=60, burst=2)
    assert [limit_a.acquire("bob", now), limit_b.acquire("bob", now)] == [0, 0]
    assert limit_a.acquire("bob", now) == 1
    assert limit_b.acquire("bob", now + 1) == 0

    RedisRevocations(a).revoke("carol", now + 10)
    RedisRevocations(b).revoke("carol", now + 5)
    assert RedisRevocations(b).to_dict() == {"not_before": {"carol": int(now + 10)}}
    RedisRevocations(b).prune(now + 10_000)
    assert RedisRevocations(a).to_dict() == {"not_before": {}}

    redis_server.stop()
    for call in (lambda: RedisSessionStore(a).user_for(session), lambda: limit_a.acquire("bob", now),
                 lambda: RedisRevocations(a).to_dict()):
        with pytest.raises(SharedStateUnavailable):
            call()
    a.close()
    b.close()
