"""A user's `streams`, counted fleet-wide by their reservations: the pure rule (which reservations hold a
stream, and the refusal at the cap), and both stores running it: SQLite, and one real Redis shared by
brokers that negotiate at once."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis_server import RedisServer

from llama_direct.budgets import (
    DAY_SECONDS,
    STREAM_RETRY_SECONDS,
    STREAM_SLOT_SECONDS,
    Budget,
    Exhausted,
    Reservation,
    StreamsFull,
    UsageReport,
    grantable,
    holds_stream,
    start_deadline,
)
from llama_direct.user_store import SqliteUserStore, UserStore
from llama_direct.user_store_redis import RedisUserStore

USER = "u-dddddddddddddddd"
NOW = 20_000 * DAY_SECONDS + 500
TTL = 30
ONE = Budget(per_day=None, per_minute=None, streams=1)


def test_a_grant_holds_a_stream_until_it_can_no_longer_start_or_its_start_is_forgotten() -> None:
    deadline = start_deadline(int(NOW) + TTL)
    assert holds_stream(deadline, NOW, NOW) and holds_stream(deadline, NOW, deadline - 1)
    assert not holds_stream(deadline, NOW, deadline)
    assert holds_stream(None, NOW, NOW + STREAM_SLOT_SECONDS - 1)  # started: held until its end is reported
    assert not holds_stream(None, NOW, NOW + STREAM_SLOT_SECONDS)


def test_at_the_cap_no_tokens_are_granted_and_the_refusal_says_so() -> None:
    assert grantable(ONE, 80, 0, 0, NOW, 0) == 80
    assert grantable(ONE, 80, 0, 0, NOW, 1) == StreamsFull(STREAM_RETRY_SECONDS)
    assert grantable(Budget(None, None, streams=3), 80, 0, 0, NOW, 2) == 80
    assert grantable(Budget(100, None), 80, 0, 0, NOW, 50) == 80  # no stream cap: none counted
    assert not Budget(None, None, streams=1).bounded  # no token window: HAProxy may still stand in


@pytest.fixture(params=["sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[UserStore, UserStore]]:
    """Two stores on one file or one Redis, as two brokers (or serve and a command) share them."""
    if request.param == "sqlite":
        made: list[UserStore] = [SqliteUserStore(tmp_path / "users.db") for _ in range(2)]
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = [RedisUserStore.from_url(server.url) for _ in range(2)]
    try:
        yield made[0], made[1]
    finally:
        for store in made:
            store.close()


def reserve(store: UserStore, jti: str, now: float, budget: Budget = ONE) -> int | Exhausted:
    held = Reservation(jti, USER, "m", "chat", "direct", 0, 0, 0, start_deadline(int(now) + TTL), now)
    return store.reserve(held, budget, 80, now)


def report(jti: str, phase: str, completion: int | None) -> UsageReport:
    return UsageReport(jti, USER, "m", "chat", "direct", phase, 3, completion)


def test_a_second_stream_at_another_broker_waits_for_the_first_to_end(stores: tuple[UserStore, UserStore]) -> None:
    a, b = stores
    assert reserve(a, "first", NOW) == 80
    assert reserve(b, "second", NOW + 1) == StreamsFull(STREAM_RETRY_SECONDS)
    a.report([report("first", "started", None)], NOW + TTL)  # it outlived its grant: held until its end
    assert reserve(b, "second", NOW + TTL + 100) == StreamsFull(STREAM_RETRY_SECONDS)
    b.report([report("first", "ended", 12)], NOW + TTL + 101)  # reported through the other broker
    assert reserve(b, "second", NOW + TTL + 102) == 80


def test_a_grant_never_used_frees_its_stream_when_it_can_no_longer_start(
    stores: tuple[UserStore, UserStore],
) -> None:
    a, b = stores
    assert reserve(a, "unused", NOW) == 80
    deadline = start_deadline(int(NOW) + TTL)
    assert reserve(b, "next", deadline - 1) == StreamsFull(STREAM_RETRY_SECONDS)
    assert reserve(b, "next", deadline) == 80


def test_a_started_stream_whose_end_never_comes_stops_counting_after_the_slot_time(
    stores: tuple[UserStore, UserStore],
) -> None:
    a, b = stores
    assert reserve(a, "lost", NOW) == 80
    a.report([report("lost", "started", None)], NOW + TTL)
    assert reserve(b, "next", NOW + STREAM_SLOT_SECONDS - 1) == StreamsFull(STREAM_RETRY_SECONDS)
    assert reserve(b, "next", NOW + STREAM_SLOT_SECONDS) == 80


def test_brokers_negotiating_at_once_never_hold_more_than_the_cap(stores: tuple[UserStore, UserStore]) -> None:
    cap = Budget(None, None, streams=3)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: reserve(stores[n % 2], f"g{n}", NOW, cap), range(16)))
    assert sorted(answer == 80 for answer in answers) == [False] * 13 + [True] * 3
    assert all(answer == StreamsFull(STREAM_RETRY_SECONDS) for answer in answers if answer != 80)
