"""Budgets and the usage ledger in the fleet's Redis, so that two brokers share one budget.

Each change to a user's windows is one optimistic transaction (`WATCH` the user's windows and
reservations, read them, run `llama_direct.budgets`' arithmetic, then `MULTI`), retried whenever another
broker changed them first: two negotiations at two brokers can never both take the last tokens. The
ledger's counters are `HINCRBY`s inside the same `MULTI`.

Keys (a Redis ACL user needs `~ld:budget:*` `~ld:reserved:*` `~ld:ledger`):
- `ld:budget:<user id>`, a hash: window (`d<day>`, `m<minute>`) -> tokens held, settled plus reserved;
- `ld:reserved:<user id>`, a hash: grant id -> the reservation as JSON;
- `LEDGER_KEY`, a hash: `[user, model, route, lane, day, column]` as JSON -> count.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from llama_direct.budgets import (
    FORGET_STARTED_SECONDS,
    Budget,
    Exhausted,
    LedgerRow,
    Reservation,
    UsageReport,
    day_of,
    day_window,
    grantable,
    holds_stream,
    minute_of,
    minute_window,
    settlement,
    window_deltas,
)

if TYPE_CHECKING:
    import redis.client

BUDGET_PREFIX = "ld:budget:"
RESERVED_PREFIX = "ld:reserved:"
LEDGER_KEY = "ld:ledger"
LEDGER_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "unseen")
WINDOW_TTL_SECONDS = 2 * 86_400
"""A user's windows outlive the day they count by a day, then go (the ledger keeps the history)."""

T = TypeVar("T")
Transaction = Callable[..., T]
"""Runs its work under `WATCH` of the keys named, again when one changed (`RedisUserStore._transaction`)."""


def reserve(transaction: Transaction[int | Exhausted], reservation: Reservation, budget: Budget, asked: int,
            now: float) -> int | Exhausted:
    user = reservation.user

    def work(pipe: redis.client.Pipeline) -> int | Exhausted:
        expired, streams = _overdue(pipe, user, now)
        used = _windows(pipe, user)
        for held in expired:
            _move(used, held, -held.amount)
        day, minute = day_of(now), minute_of(now)
        amount = grantable(budget, asked, used.get(day_window(day), 0), used.get(minute_window(minute), 0), now,
                           streams)
        if isinstance(amount, Exhausted):
            return amount
        pipe.multi()
        _forget(pipe, user, expired)
        _charge(pipe, user, window_deltas(day, minute, amount))
        pipe.hset(RESERVED_PREFIX + user, reservation.jti, _encode(reservation, amount, day, minute, now))
        return amount

    return transaction(work, BUDGET_PREFIX + user, RESERVED_PREFIX + user)


def report(transaction: Transaction[None], usage: UsageReport, now: float) -> None:
    user = usage.sub

    def work(pipe: redis.client.Pipeline) -> None:
        raw = pipe.hget(RESERVED_PREFIX + user, usage.jti)
        held = _decode(usage.jti, user, raw) if raw is not None else None
        if usage.phase == "started":
            if held is not None:
                pipe.multi()
                pipe.hset(RESERVED_PREFIX + user, usage.jti, _encode(held, held.amount, held.day, held.minute,
                                                                     held.created, started=True))
            return
        pipe.multi()
        if held is not None:
            pipe.hdel(RESERVED_PREFIX + user, usage.jti)
        settled = settlement(held, usage.completion_tokens, now)
        _charge(pipe, user, settled.deltas)
        _ledger(pipe, usage, settled.day, settled.completion)

    transaction(work, BUDGET_PREFIX + user, RESERVED_PREFIX + user)


def windows(transaction: Transaction[tuple[int, int]], user: str, now: float) -> tuple[int, int]:
    """What `now`'s windows hold, overdue reservations returned first."""

    def work(pipe: redis.client.Pipeline) -> tuple[int, int]:
        expired, _ = _overdue(pipe, user, now)
        used = _windows(pipe, user)
        for held in expired:
            _move(used, held, -held.amount)
        if expired:
            pipe.multi()
            _forget(pipe, user, expired)
        return used.get(day_window(day_of(now)), 0), used.get(minute_window(minute_of(now)), 0)

    return transaction(work, BUDGET_PREFIX + user, RESERVED_PREFIX + user)


def ledger(client: Any, since_day: int, user_id: str | None) -> list[LedgerRow]:
    counts: dict[tuple[str, str, str, str, int], dict[str, int]] = {}
    for field, value in client.hgetall(LEDGER_KEY).items():
        user, model, route, lane, day, column = json.loads(field)
        if day >= since_day and (user_id is None or user == user_id):
            counts.setdefault((user, model, route, lane, day), {})[column] = int(value)
    return [LedgerRow(*key, *(found.get(column, 0) for column in LEDGER_COLUMNS))
            for key, found in sorted(counts.items(), key=lambda item: (item[0][4], *item[0][:4]))]


def _overdue(pipe: redis.client.Pipeline, user: str, now: float) -> tuple[list[Reservation], int]:
    """Reservations to drop: never started and past their deadline (returned), or started and forgotten;
    and how many of the user's streams the others hold (`holds_stream`)."""
    found = []
    streams = 0
    for jti, raw in pipe.hgetall(RESERVED_PREFIX + user).items():
        held = _decode(_text(jti), user, raw)
        streams += holds_stream(held.deadline, held.created, now)
        if held.deadline is not None and held.deadline <= now:
            found.append(held)
        elif held.deadline is None and held.created <= now - FORGET_STARTED_SECONDS:
            found.append(Reservation(held.jti, user, held.model, held.route, held.lane, 0, held.day, held.minute,
                                     None, held.created))
    return found, streams


def _forget(pipe: redis.client.Pipeline, user: str, expired: list[Reservation]) -> None:
    if expired:
        pipe.hdel(RESERVED_PREFIX + user, *(held.jti for held in expired))
        moves: dict[str, int] = {}
        for held in expired:
            _move(moves, held, -held.amount)
        _charge(pipe, user, moves)


def _windows(pipe: redis.client.Pipeline, user: str) -> dict[str, int]:
    return {_text(window): int(used) for window, used in pipe.hgetall(BUDGET_PREFIX + user).items()}


def _move(windows: dict[str, int], held: Reservation, delta: int) -> None:
    for window, moved in window_deltas(held.day, held.minute, delta).items():
        windows[window] = windows.get(window, 0) + moved


def _charge(pipe: redis.client.Pipeline, user: str, deltas: dict[str, int]) -> None:
    """Each window moved by its delta (in a `MULTI`); a window is never taken below zero by a refund
    that outlived it, since a window gone is a window that counts nothing now."""
    for window, delta in deltas.items():
        if delta:
            pipe.hincrby(BUDGET_PREFIX + user, window, delta)
    pipe.expire(BUDGET_PREFIX + user, WINDOW_TTL_SECONDS)


def _ledger(pipe: redis.client.Pipeline, usage: UsageReport, day: int, completion: int) -> None:
    values = (1, usage.prompt_tokens or 0, completion, 1 if usage.completion_tokens is None else 0)
    for column, value in zip(LEDGER_COLUMNS, values, strict=True):
        if value:
            field = json.dumps([usage.sub, usage.model, usage.route, usage.lane, day, column])
            pipe.hincrby(LEDGER_KEY, field, value)


def _encode(held: Reservation, amount: int, day: int, minute: int, created: float, *, started: bool = False) -> str:
    return json.dumps({"model": held.model, "route": held.route, "lane": held.lane, "amount": amount, "day": day,
                       "minute": minute, "deadline": None if started else held.deadline, "created": created})


def _decode(jti: str, user: str, raw: object) -> Reservation:
    entry = json.loads(_text(raw))
    return Reservation(jti, user, str(entry["model"]), str(entry["route"]), str(entry["lane"]), int(entry["amount"]),
                       int(entry["day"]), int(entry["minute"]), entry["deadline"], float(entry["created"]))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
