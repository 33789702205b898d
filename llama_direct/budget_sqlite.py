"""Budgets and the usage ledger in the users' SQLite file: the statements, run by `SqliteUserStore` inside
its `BEGIN IMMEDIATE` transactions, so that a reservation's check and its charge are one step even with
two writers (serve's broker, a `users` command). The arithmetic is `llama_direct.budgets`'.

Tables (migration 3 of `llama_direct.user_store.MIGRATIONS`): `budget_windows` (what each user's day
and minute windows hold, settled plus reserved), `reservations` (by grant id), `ledger` (user, model,
route, lane, day: requests, prompt and completion tokens, ends not seen).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from llama_direct import budgets

MIGRATION = (
    "CREATE TABLE budget_windows (user_id TEXT NOT NULL, window TEXT NOT NULL, used INTEGER NOT NULL, "
    "PRIMARY KEY (user_id, window))",
    "CREATE TABLE reservations (jti TEXT PRIMARY KEY, user_id TEXT NOT NULL, model TEXT NOT NULL, "
    "route TEXT NOT NULL, lane TEXT NOT NULL, amount INTEGER NOT NULL, day INTEGER NOT NULL, "
    "minute INTEGER NOT NULL, deadline REAL, created REAL NOT NULL)",
    "CREATE INDEX reservations_by_user ON reservations (user_id)",
    "CREATE TABLE ledger (user_id TEXT NOT NULL, model TEXT NOT NULL, route TEXT NOT NULL, lane TEXT NOT NULL, "
    "day INTEGER NOT NULL, requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, "
    "completion_tokens INTEGER NOT NULL, unseen INTEGER NOT NULL, "
    "PRIMARY KEY (user_id, model, route, lane, day))",
)


def windows(db: sqlite3.Connection, user_id: str, now: float) -> tuple[int, int]:
    """(day used, minute used) for `now`'s windows, settled plus reserved."""
    return (_used(db, user_id, budgets.day_window(budgets.day_of(now))),
            _used(db, user_id, budgets.minute_window(budgets.minute_of(now))))


def reserve(db: sqlite3.Connection, reservation: budgets.Reservation, budget: budgets.Budget, asked: int,
            now: float) -> int | budgets.Exhausted:
    """Overdue reservations of the user returned, then `asked` capped at what remains and charged to
    both windows, with the reservation recorded under its grant id (its `amount` is ignored)."""
    expire_user(db, reservation.user, now)
    day_used, minute_used = windows(db, reservation.user, now)
    held = db.execute("SELECT deadline, created FROM reservations WHERE user_id = ?", (reservation.user,))
    streams = sum(budgets.holds_stream(deadline, float(created), now) for deadline, created in held.fetchall())
    amount = budgets.grantable(budget, asked, day_used, minute_used, now, streams)
    if isinstance(amount, budgets.Exhausted):
        return amount
    day, minute = budgets.day_of(now), budgets.minute_of(now)
    _move(db, reservation.user, budgets.window_deltas(day, minute, amount))
    db.execute("INSERT INTO reservations (jti, user_id, model, route, lane, amount, day, minute, deadline, created) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (reservation.jti, reservation.user, reservation.model, reservation.route, reservation.lane, amount,
                day, minute, reservation.deadline, now))
    db.execute("DELETE FROM budget_windows WHERE user_id = ? AND window LIKE 'm%' AND window < ?",
               (reservation.user, budgets.minute_window(minute - 1)))
    return amount


LedgerKey = tuple[str, str, str, str, int]
"""A ledger row's key: user, model, route, lane, day."""


def report(db: sqlite3.Connection, reports: Sequence[budgets.UsageReport], now: float) -> None:
    """A gate's reports (one body), in order: `started` holds the reservation until its end; `ended`
    settles it (the unused part returns) and counts in the ledger. A report with no reservation (the
    owner, a user without token limits, a reservation already returned) is charged to `now`'s windows as
    it is. The ledger's rows are sums, so each row the body touches is written once, not once a report."""
    rows: dict[LedgerKey, list[int]] = {}
    for usage in reports:
        ended = _settle(db, usage, now)
        if ended is not None:
            day, completion = ended
            counts = rows.setdefault((usage.sub, usage.model, usage.route, usage.lane, day), [0, 0, 0, 0])
            counts[0] += 1
            counts[1] += usage.prompt_tokens or 0
            counts[2] += completion
            counts[3] += 1 if usage.completion_tokens is None else 0
    for key, counts in rows.items():
        _ledger(db, key, counts)


def _settle(db: sqlite3.Connection, usage: budgets.UsageReport, now: float) -> tuple[int, int] | None:
    """One report's reservation held or settled; for an end, the ledger day and completion it counts."""
    row = db.execute("SELECT amount, day, minute FROM reservations WHERE jti = ? AND user_id = ?",
                     (usage.jti, usage.sub)).fetchone()
    if usage.phase == "started":
        db.execute("UPDATE reservations SET deadline = NULL WHERE jti = ? AND user_id = ?", (usage.jti, usage.sub))
        return None
    held = None
    if row is not None:
        amount, day, minute = (int(value) for value in row)
        held = budgets.Reservation(usage.jti, usage.sub, usage.model, usage.route, usage.lane, amount, day, minute,
                                   None, now)
        db.execute("DELETE FROM reservations WHERE jti = ?", (usage.jti,))
    settled = budgets.settlement(held, usage.completion_tokens, now)
    _move(db, usage.sub, settled.deltas)
    return settled.day, settled.completion


def expire_user(db: sqlite3.Connection, user_id: str, now: float) -> None:
    """Grants never started, past their start deadline, return in full; started ones no end settled,
    kept charged, are forgotten after `FORGET_STARTED_SECONDS`."""
    for amount, day, minute in db.execute(
            "SELECT amount, day, minute FROM reservations WHERE user_id = ? AND deadline IS NOT NULL "
            "AND deadline <= ?", (user_id, now)).fetchall():
        _move(db, user_id, budgets.window_deltas(int(day), int(minute), -int(amount)))
    db.execute("DELETE FROM reservations WHERE user_id = ? AND ((deadline IS NOT NULL AND deadline <= ?) "
               "OR (deadline IS NULL AND created <= ?))", (user_id, now, now - budgets.FORGET_STARTED_SECONDS))


def ledger(db: sqlite3.Connection, since_day: int, user_id: str | None) -> list[budgets.LedgerRow]:
    query = ("SELECT user_id, model, route, lane, day, requests, prompt_tokens, completion_tokens, unseen "
             "FROM ledger WHERE day >= ?")
    parameters: list[object] = [since_day]
    if user_id is not None:
        query += " AND user_id = ?"
        parameters.append(user_id)
    rows = db.execute(query + " ORDER BY day, user_id, model, route, lane", parameters).fetchall()
    return [budgets.LedgerRow(str(user), str(model), str(route), str(lane), *(int(value) for value in numbers))
            for user, model, route, lane, *numbers in rows]


def _ledger(db: sqlite3.Connection, key: LedgerKey, counts: list[int]) -> None:
    """`counts` (requests, prompt tokens, completion tokens, ends not seen) added to the row of `key`."""
    db.execute("INSERT INTO ledger (user_id, model, route, lane, day, requests, prompt_tokens, completion_tokens, "
               "unseen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, model, route, lane, day) DO UPDATE "
               "SET requests = requests + excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
               "completion_tokens = completion_tokens + excluded.completion_tokens, "
               "unseen = unseen + excluded.unseen",
               (*key, *counts))


def _used(db: sqlite3.Connection, user_id: str, window: str) -> int:
    row = db.execute("SELECT used FROM budget_windows WHERE user_id = ? AND window = ?", (user_id, window)).fetchone()
    return int(row[0]) if row else 0


def _move(db: sqlite3.Connection, user_id: str, deltas: dict[str, int]) -> None:
    """Each window moved by its delta, never below zero (a refund that outlived its window)."""
    for window, delta in deltas.items():
        if delta:
            db.execute("INSERT INTO budget_windows (user_id, window, used) VALUES (?, ?, ?) "
                       "ON CONFLICT (user_id, window) DO UPDATE SET used = max(used + ?, 0)",
                       (user_id, window, max(delta, 0), delta))
