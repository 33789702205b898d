"""Where users live: one interface (`UserStore`), in SQLite in the data dir, or in Redis for a fleet.

**SQLite** (`SqliteUserStore`, the data dir's `USERS_DB_FILE`, 0600) through the standard library.
`serve`'s broker and a `llama-direct users` command both open it, so: WAL (readers never wait for a
writer), a busy timeout (a writer waits its turn rather than fail), and every change in one
`BEGIN IMMEDIATE` transaction. The schema is a numbered list of migrations (`MIGRATIONS`); opening
the file applies the ones it has not seen, in one transaction, and records `schema_version`, so a
later version appends a migration and every older file catches up when it is opened. A file from a
newer version than this one is refused rather than guessed at.

A removal or rotation records a revocation (`sub` -> not-before second) beside the change, in the
same transaction: the broker applies the store's revocations at start and when told
(`llama_direct.control.USERS_CHANGED_PATH`), so grants the user already holds are refused by every
gate. In Redis the store writes the shared revocations itself (`llama_direct.user_store_redis`).

**Redis** (`llama_direct.user_store_redis.RedisUserStore`): the same interface; `open_store` picks
it when a Redis URL is configured, so every broker of a fleet knows the same users.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from llama_direct import budget_sqlite
from llama_direct.budgets import Budget, Exhausted, LedgerRow, Reservation, UsageReport
from llama_direct.runtime import USERS_DB_FILE
from llama_direct.tokens import LEEWAY_SECONDS, MAX_TTL_SECONDS
from llama_direct.users import (
    SECRET_KINDS,
    Admit,
    Credential,
    Limits,
    Listed,
    NoSuchUser,
    SecretRecord,
    User,
    UserError,
    UserExists,
)

BUSY_TIMEOUT_MS = 10_000
"""How long a writer waits for the other one (serve's broker, a `users` command) before giving up."""
REVOCATION_HORIZON = MAX_TTL_SECONDS + LEEWAY_SECONDS
"""A revocation matters until every token it covers has expired (as `llama_direct.replay.Revocations`)."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: users and their secrets' digests
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            models TEXT,
            tokens_per_day INTEGER,
            tokens_per_minute INTEGER,
            streams INTEGER,
            max_tokens INTEGER,
            generation INTEGER NOT NULL DEFAULT 1,
            created REAL NOT NULL
        )""",
        """CREATE TABLE secrets (
            digest TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            UNIQUE (user_id, kind)
        )""",
    ),
    (  # 2: revocations a removal or rotation leaves for the broker
        "CREATE TABLE revocations (sub TEXT PRIMARY KEY, not_before INTEGER NOT NULL)",
    ),
    budget_sqlite.MIGRATION,  # 3: budgets' windows, reservations, and the usage ledger
)
"""Each entry is one schema version's statements, applied in order; only ever append."""

class StoreError(UserError):
    """The store cannot be used (a newer schema, a damaged file); the message says which, not a path."""


class UserStore(Protocol):
    """Users, their secrets' digests, and the revocations their changes leave behind."""

    def add(self, user: User, secrets: Sequence[SecretRecord], admit: Admit | None = None) -> None:
        """A new user (`UserExists` when the name is taken). `admit` (a proxy's header user, made without
        secrets) is asked in the add's own transaction, so two brokers never both take the last place."""
        ...

    def user(self, name: str) -> User | None: ...

    def user_by_id(self, user_id: str) -> User | None: ...

    def users(self) -> list[Listed]:
        """Every user by name, with each secret's fingerprint."""
        ...

    def set_limits(self, name: str, limits: Limits) -> User: ...

    def rotate(self, name: str, secrets: Sequence[SecretRecord], not_before: int) -> User:
        """New secrets in place of the old ones, the generation moved on, and the user's grants
        issued before `not_before` revoked."""
        ...

    def remove(self, name: str, not_before: int) -> User:
        """The user and their secrets gone, and their grants issued before `not_before` revoked."""
        ...

    def credential(self, digest: str) -> Credential | None:
        """The user and kind of the secret with this digest."""
        ...

    def revocations(self, now: float) -> dict[str, int]:
        """sub -> not-before the broker must apply (those still within the horizon)."""
        ...

    def reserve(self, reservation: Reservation, budget: Budget, asked: int, now: float) -> int | Exhausted:
        """`asked` tokens capped at what the user's windows have left and reserved under the grant's id
        (`llama_direct.budgets`), in one step however many brokers ask at once."""
        ...

    def report(self, reports: Sequence[UsageReport], now: float) -> None:
        """A gate's reports of streams' starts and ends, in their order (one `POST /usage` body): each
        settles its reservation and writes the ledger."""
        ...

    def budget_windows(self, user_id: str, now: float) -> tuple[int, int]:
        """What the user's day and minute windows hold now (settled plus reserved)."""
        ...

    def ledger(self, since_day: int, user_id: str | None = None) -> list[LedgerRow]:
        """The usage ledger's rows from `since_day` (days since the epoch), of one user or all."""
        ...

    def close(self) -> None: ...


def open_store(data_dir: Path, redis_url: str | None = None) -> UserStore:
    """The fleet's Redis when a URL is given, else the data dir's SQLite file (made on first use)."""
    if redis_url:
        from llama_direct.user_store_redis import RedisUserStore

        return RedisUserStore.from_url(redis_url)
    return SqliteUserStore(data_dir / USERS_DB_FILE)


def _write_ahead_log(db: sqlite3.Connection) -> None:
    """WAL mode, waiting up to the busy timeout for it. SQLite does not wait that timeout for this
    switch: when serve's broker and a `users` command open a new file at the same moment, one was
    refused 'database is locked' (77 of 300 simultaneous first opens here), which read as a
    file that cannot be read. So the switch is retried until the timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteUserStore:
    """`UserStore` in one SQLite file. Thread-safe: one connection, used under a lock."""

    def __init__(self, path: Path, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> None:
        _create_private(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _write_ahead_log(self._db)
            self._db.execute("PRAGMA foreign_keys = ON")
            self.version = self._migrate(migrations)
        except sqlite3.DatabaseError:
            self._db.close()
            raise StoreError("the users database cannot be read; move it aside to start afresh") from None

    def _migrate(self, migrations: Sequence[Sequence[str]]) -> int:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > len(migrations):
                raise StoreError(f"the users database is from a newer llama-direct (schema {version}); "
                                 "upgrade llama-direct")
            for statements in migrations[version:]:
                for statement in statements:
                    db.execute(statement)
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (len(migrations),))
            else:
                db.execute("UPDATE schema_version SET version = ?", (len(migrations),))
        return len(migrations)

    @contextlib.contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction that holds the write lock from its start, so two writers never deadlock.

        `durable` False (a budget's counters, the ledger: one write per stream) commits without its own
        fsync (`synchronous = NORMAL`, safe in WAL mode: the file stays whole, and only a power cut can
        lose the last of these); a user's change, a secret or a revocation waits for the disk (`FULL`),
        which also makes every earlier commit durable."""
        with self._lock:
            self._db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, query: str, parameters: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(query, parameters).fetchall()

    def add(self, user: User, secrets: Sequence[SecretRecord], admit: Admit | None = None) -> None:
        try:
            with self._write() as db:
                if admit is not None:
                    admit(db.execute("SELECT COUNT(*) FROM users WHERE id NOT IN (SELECT user_id FROM secrets)")
                          .fetchone()[0])
                db.execute("INSERT INTO users (id, name, models, tokens_per_day, tokens_per_minute, streams, "
                           "max_tokens, generation, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (user.id, user.name, *_limit_columns(user.limits), user.generation, user.created))
                _insert_secrets(db, user.id, secrets)
        except sqlite3.IntegrityError:
            raise UserExists(user.name) from None

    def user(self, name: str) -> User | None:
        rows = self._read(f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,))
        return _user(rows[0]) if rows else None

    def user_by_id(self, user_id: str) -> User | None:
        rows = self._read(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    def users(self) -> list[Listed]:
        rows = self._read(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name")
        prints: dict[str, dict[str, str]] = {}
        for user_id, kind, fingerprint in self._read("SELECT user_id, kind, fingerprint FROM secrets"):
            prints.setdefault(str(user_id), {})[str(kind)] = str(fingerprint)
        return [Listed(user, prints.get(user.id, {})) for user in map(_user, rows)]

    def set_limits(self, name: str, limits: Limits) -> User:
        with self._write() as db:
            found = db.execute("UPDATE users SET models = ?, tokens_per_day = ?, tokens_per_minute = ?, "
                               "streams = ?, max_tokens = ? WHERE name = ?", (*_limit_columns(limits), name))
            if found.rowcount != 1:
                raise NoSuchUser(name)
            return _existing(db, name)

    def rotate(self, name: str, secrets: Sequence[SecretRecord], not_before: int) -> User:
        with self._write() as db:
            user = _existing(db, name)
            db.execute("DELETE FROM secrets WHERE user_id = ?", (user.id,))
            _insert_secrets(db, user.id, secrets)
            db.execute("UPDATE users SET generation = generation + 1 WHERE id = ?", (user.id,))
            _revoke(db, user.id, not_before)
        return User(user.id, user.name, user.limits, user.created, user.generation + 1)

    def remove(self, name: str, not_before: int) -> User:
        with self._write() as db:
            user = _existing(db, name)
            db.execute("DELETE FROM users WHERE id = ?", (user.id,))
            _revoke(db, user.id, not_before)
        return user

    def credential(self, digest: str) -> Credential | None:
        rows = self._read(f"SELECT kind, {_USER_COLUMNS} FROM secrets JOIN users ON id = user_id "
                          "WHERE digest = ?", (digest,))
        return Credential(user=_user(rows[0][1:]), kind=str(rows[0][0])) if rows else None

    def revocations(self, now: float) -> dict[str, int]:
        rows = self._read("SELECT sub, not_before FROM revocations WHERE not_before > ?",
                          (math.floor(now - REVOCATION_HORIZON),))
        return {str(sub): int(str(not_before)) for sub, not_before in rows}

    def reserve(self, reservation: Reservation, budget: Budget, asked: int, now: float) -> int | Exhausted:
        with self._write(durable=False) as db:
            return budget_sqlite.reserve(db, reservation, budget, asked, now)

    def report(self, reports: Sequence[UsageReport], now: float) -> None:
        """One transaction for the whole body: a commit each cost the broker more than the statements."""
        with self._write(durable=False) as db:
            budget_sqlite.report(db, reports, now)

    def budget_windows(self, user_id: str, now: float) -> tuple[int, int]:
        with self._write(durable=False) as db:
            budget_sqlite.expire_user(db, user_id, now)
            return budget_sqlite.windows(db, user_id, now)

    def ledger(self, since_day: int, user_id: str | None = None) -> list[LedgerRow]:
        with self._lock:
            return budget_sqlite.ledger(self._db, since_day, user_id)

    def close(self) -> None:
        with self._lock:
            self._db.close()


_USER_COLUMNS = "id, name, models, tokens_per_day, tokens_per_minute, streams, max_tokens, created, generation"


def _limit_columns(limits: Limits) -> tuple[object, ...]:
    models = json.dumps(list(limits.models)) if limits.models is not None else None
    return (models, limits.tokens_per_day, limits.tokens_per_minute, limits.streams, limits.max_tokens)


def _user(row: Sequence[object]) -> User:
    user_id, name, models, per_day, per_minute, streams, max_tokens, created, generation = row
    limits = Limits(models=tuple(json.loads(str(models))) if models is not None else None,
                    tokens_per_day=_int_or_none(per_day), tokens_per_minute=_int_or_none(per_minute),
                    streams=_int_or_none(streams), max_tokens=_int_or_none(max_tokens))
    return User(id=str(user_id), name=str(name), limits=limits, created=float(str(created)),
                generation=int(str(generation)))


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(str(value))


def _existing(db: sqlite3.Connection, name: str) -> User:
    row = db.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NoSuchUser(name)
    return _user(row)


def _insert_secrets(db: sqlite3.Connection, user_id: str, secrets: Sequence[SecretRecord]) -> None:
    for record in secrets:
        if record.kind not in SECRET_KINDS:
            raise UserError(f"no such kind of secret: {record.kind}")
        db.execute("INSERT INTO secrets (digest, user_id, kind, fingerprint) VALUES (?, ?, ?, ?)",
                   (record.digest, user_id, record.kind, record.fingerprint))


def _revoke(db: sqlite3.Connection, sub: str, not_before: int) -> None:
    """Never loosens an earlier revocation; forgets those past the horizon while it is here."""
    db.execute("INSERT INTO revocations (sub, not_before) VALUES (?, ?) ON CONFLICT (sub) DO UPDATE "
               "SET not_before = max(not_before, excluded.not_before)", (sub, not_before))
    db.execute("DELETE FROM revocations WHERE not_before <= ?", (not_before - REVOCATION_HORIZON - 1,))


def _create_private(path: Path) -> None:
    """The file made 0600 before SQLite opens it (its -wal and -shm files follow its mode)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StoreError(f"cannot open the users database in the data dir: {error.strerror}") from None
    os.close(fd)
