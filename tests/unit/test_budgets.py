"""Budgets: the reservation arithmetic, and the stores that run it (SQLite, and Redis shared by two stores
as two brokers share it), driven by any interleaving of reserve, start, settle and expiry."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_server import RedisServer

from llama_direct.budgets import (
    DAY_SECONDS,
    MIN_GRANT,
    Budget,
    Exhausted,
    Reservation,
    UsageReport,
    day_of,
    grantable,
    start_deadline,
)
from llama_direct.user_store import SqliteUserStore, UserStore
from llama_direct.user_store_redis import RedisUserStore

USER = "u-aaaaaaaaaaaaaaaa"
DAY_START = 20_000 * DAY_SECONDS
TTL = 60


def test_grantable_caps_at_what_remains() -> None:
    budget = Budget(per_day=100, per_minute=None)
    assert grantable(budget, 80, 0, 0, DAY_START) == 80
    assert grantable(budget, 80, 80, 0, DAY_START) == 20
    assert grantable(budget, 80, 100 - MIN_GRANT, 0, DAY_START) == MIN_GRANT
    assert grantable(budget, 8, 0, 0, DAY_START) == 8


def test_grantable_refuses_below_the_minimum_until_the_short_window_turns() -> None:
    assert grantable(Budget(100, None), 80, 85, 0, DAY_START + 100) == Exhausted(DAY_SECONDS - 100)
    assert grantable(Budget(None, 50), 80, 0, 40, DAY_START + 100) == Exhausted(20)
    assert grantable(Budget(100, 50), 80, 90, 40, DAY_START + 100) == Exhausted(DAY_SECONDS - 100)
    assert grantable(Budget(None, 50), 80, 10**9, 0, DAY_START) == 50


@dataclass
class Held:
    jti: str
    amount: int
    expires: int
    started: bool = False


@dataclass
class Model:
    """What really happened: each stream generates at most its grant's `max_tokens` (the gate holds it)."""

    now: float = DAY_START + 1_000
    held: list[Held] = field(default_factory=list)
    generated: int = 0
    charged: int = 0


def report(jti: str, phase: str, completion: int | None) -> UsageReport:
    return UsageReport(jti=jti, sub=USER, model="m", route="chat", lane="direct", phase=phase, prompt_tokens=5,
                       completion_tokens=completion)


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["reserve", "start", "end", "unseen", "wait", "other"]), st.integers(0, 200),
              st.floats(0, 1)),
    max_size=40,
)


def run(stores: list[UserStore], budget: Budget, operations: list[tuple[str, int, float]]) -> None:
    """Each operation at a store picked by turn (two stores on one Redis are two brokers)."""
    model = Model()
    limit = budget.per_day
    assert limit is not None
    for turn, (name, number, fraction) in enumerate(operations):
        store = stores[turn % len(stores)]
        if name == "reserve":
            jti = secrets.token_hex(8)
            expires = int(model.now) + TTL
            held = Reservation(jti, USER, "m", "chat", "direct", 0, 0, 0, start_deadline(expires), model.now)
            amount = store.reserve(held, budget, max(1, number), model.now)
            if not isinstance(amount, Exhausted):
                assert 1 <= amount <= max(1, number)
                model.held.append(Held(jti, amount, expires))
        elif model.held and name in ("start", "end", "unseen"):
            held = model.held[number % len(model.held)]
            if name == "start" and not held.started and model.now <= held.expires:  # the gate takes it until exp
                held.started = True
                store.report([report(held.jti, "started", None)], model.now)
            elif name != "start" and held.started:
                used = round(held.amount * fraction) if name == "end" else held.amount  # unseen: it may have all
                model.generated += used
                store.report([report(held.jti, "ended", used if name == "end" else None)], model.now)
                model.held.remove(held)
        elif name == "wait":
            model.now += number * 3
        # the worst case: every started stream not yet ended goes on to generate its whole grant
        worst = model.generated + sum(held.amount for held in model.held if held.started)
        assert worst <= limit
        day_used, minute_used = store.budget_windows(USER, model.now)
        assert day_used <= limit
        assert budget.per_minute is None or minute_used <= budget.per_minute
    model.now += TTL + 100
    for held in model.held:
        if held.started:
            store.report([report(held.jti, "ended", 0)], model.now)
    day_used, _ = stores[0].budget_windows(USER, model.now)
    assert day_used == model.generated, "every unused reservation returned"
    assert sum(row.completion_tokens for row in stores[0].ledger(day_of(DAY_START))) == model.generated


BUDGETS = st.sampled_from([Budget(100, None), Budget(100, 40), Budget(300, 100)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=BUDGETS, operations=OPERATIONS)
def test_no_interleaving_overshoots_sqlite(tmp_path: Path, budget: Budget,
                                           operations: list[tuple[str, int, float]]) -> None:
    path = tmp_path / f"{secrets.token_hex(6)}.db"
    one, two = SqliteUserStore(path), SqliteUserStore(path)  # serve's broker and a users command
    try:
        run([one, two], budget, operations)
    finally:
        one.close()
        two.close()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=BUDGETS, operations=OPERATIONS)
def test_no_interleaving_overshoots_two_brokers_on_one_redis(shared_redis: RedisServer, budget: Budget,
                                                             operations: list[tuple[str, int, float]]) -> None:
    one, two = RedisUserStore.from_url(shared_redis.url), RedisUserStore.from_url(shared_redis.url)
    one._redis.flushdb()
    try:
        run([one, two], budget, operations)
    finally:
        one.close()
        two.close()


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UserStore]:
    if request.param == "sqlite":
        made: UserStore = SqliteUserStore(tmp_path / "users.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisUserStore.from_url(server.url)
    try:
        yield made
    finally:
        made.close()


def reserve(store: UserStore, jti: str, asked: int, now: float) -> int:
    held = Reservation(jti, USER, "m", "chat", "direct", 0, 0, 0, start_deadline(int(now) + TTL), now)
    amount = store.reserve(held, Budget(100, None), asked, now)
    assert isinstance(amount, int)
    return amount


def test_settlement_returns_the_unused_part(store: UserStore) -> None:
    now = DAY_START + 50
    assert reserve(store, "a", 80, now) == 80
    assert reserve(store, "b", 80, now) == 20
    assert isinstance(store.reserve(Reservation("c", USER, "m", "chat", "direct", 0, 0, 0, now + 90, now),
                                    Budget(100, None), 80, now), Exhausted)
    store.report([report("a", "started", None)], now)
    store.report([report("a", "ended", 30)], now + 1)
    assert store.budget_windows(USER, now + 1) == (50, 50)
    assert reserve(store, "c", 80, now + 2) == 50


def test_one_body_settles_its_reports_in_their_order(store: UserStore) -> None:
    """A gate's body (`POST /usage`) holds several streams' reports; the store takes them in one call, in
    order: a start then its end settle as they would one by one, and the other stream's end too."""
    now = DAY_START + 50
    reserve(store, "a", 40, now)
    reserve(store, "b", 40, now)
    store.report([report("a", "started", None), report("b", "started", None), report("a", "ended", 10),
                  report("b", "ended", None)], now + 1)
    assert store.budget_windows(USER, now + 1)[0] == 50
    [row] = store.ledger(day_of(now))
    assert (row.requests, row.completion_tokens, row.unseen) == (2, 50, 1)


def test_a_grant_never_started_returns_in_full_after_its_deadline(store: UserStore) -> None:
    now = DAY_START + 50
    reserve(store, "a", 80, now)
    assert store.budget_windows(USER, now + TTL)[0] == 80
    assert store.budget_windows(USER, start_deadline(int(now) + TTL))[0] == 0


def test_an_end_not_seen_is_charged_its_whole_reservation(store: UserStore) -> None:
    now = DAY_START + 50
    reserve(store, "a", 70, now)
    store.report([report("a", "started", None)], now)
    store.report([report("a", "ended", None)], now + 500)
    assert store.budget_windows(USER, now + 500)[0] == 70
    [row] = store.ledger(day_of(now))
    assert (row.requests, row.prompt_tokens, row.completion_tokens, row.unseen) == (1, 5, 70, 1)


def test_usage_without_a_reservation_goes_to_the_ledger(store: UserStore) -> None:
    """The owner, and users without token limits, reserve nothing; their usage is still recorded."""
    owner = UsageReport("j", "local", "m", "responses", "baseline", "ended", 12, 9)
    store.report([owner], DAY_START + 5)
    store.report([owner], DAY_START + DAY_SECONDS + 5)
    rows = store.ledger(day_of(DAY_START) + 1)
    assert [(row.user, row.route, row.lane, row.requests, row.completion_tokens) for row in rows] == [
        ("local", "responses", "baseline", 1, 9)]
    assert len(store.ledger(0)) == 2
    assert store.ledger(0, USER) == []
