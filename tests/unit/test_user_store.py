"""The user store: one interface, in SQLite (two writers, migrations) and in a real Redis."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer

from llama_direct.runtime import USERS_DB_FILE
from llama_direct.shared_replay import REVOCATIONS_KEY
from llama_direct.user_store import MIGRATIONS, SqliteUserStore, StoreError, UserStore, open_store
from llama_direct.user_store_redis import RedisUserStore
from llama_direct.users import (
    API_KEY,
    LOGIN,
    Limits,
    NoSuchUser,
    UserExists,
    new_secrets,
    new_user,
    secret_digest,
)

NOW = 1_750_000_000.0


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UserStore]:
    if request.param == "sqlite":
        made: UserStore = open_store(tmp_path)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = open_store(tmp_path, server.url)
    yield made
    made.close()


def test_add_find_and_list_without_secrets(store: UserStore) -> None:
    user = new_user("Ann", Limits(models=("smol",), tokens_per_day=100), NOW)
    made = new_secrets()
    store.add(user, made.records())
    assert store.user("ann") == user
    assert store.user_by_id(user.id) == user
    assert store.user("bob") is None and store.user_by_id("u-aaaaaaaaaaaaaaaa") is None
    login = store.credential(secret_digest(made.login_token))
    key = store.credential(secret_digest(made.api_key))
    assert login is not None and key is not None
    assert (login.user, login.kind, key.kind) == (user, LOGIN, API_KEY)
    assert store.credential(secret_digest("ldk_wrong")) is None
    [listed] = store.users()
    assert listed.user == user
    assert listed.fingerprints == {LOGIN: secret_digest(made.login_token)[:8], API_KEY: secret_digest(made.api_key)[:8]}


def test_a_name_is_taken_once(store: UserStore) -> None:
    store.add(new_user("ann", Limits(), NOW), new_secrets().records())
    with pytest.raises(UserExists):
        store.add(new_user("ANN", Limits(), NOW), new_secrets().records())
    assert len(store.users()) == 1


def test_set_limits_keeps_the_secrets(store: UserStore) -> None:
    user = new_user("ann", Limits(), NOW)
    made = new_secrets()
    store.add(user, made.records())
    changed = store.set_limits("ann", Limits(streams=2, max_tokens=64))
    assert changed.limits == Limits(streams=2, max_tokens=64) and changed.id == user.id
    assert store.user("ann") == changed
    found = store.credential(secret_digest(made.api_key))
    assert found is not None and found.user == changed
    with pytest.raises(NoSuchUser):
        store.set_limits("bob", Limits())


def test_rotate_refuses_the_old_secrets_and_moves_the_generation_on(store: UserStore) -> None:
    user = new_user("ann", Limits(), NOW)
    old, new = new_secrets(), new_secrets()
    store.add(user, old.records())
    rotated = store.rotate("ann", new.records(), not_before=int(NOW) + 1)
    assert (rotated.id, rotated.generation) == (user.id, 2)
    assert store.credential(secret_digest(old.login_token)) is None
    assert store.credential(secret_digest(old.api_key)) is None
    found = store.credential(secret_digest(new.login_token))
    assert found is not None and found.user == rotated
    with pytest.raises(NoSuchUser):
        store.rotate("bob", new_secrets().records(), not_before=int(NOW))


def test_remove_forgets_the_user_and_secrets(store: UserStore) -> None:
    ann, bob = new_user("ann", Limits(), NOW), new_user("bob", Limits(), NOW)
    made = new_secrets()
    store.add(ann, made.records())
    store.add(bob, new_secrets().records())
    assert store.remove("ann", not_before=int(NOW) + 1) == ann
    assert store.user("ann") is None and store.user_by_id(ann.id) is None
    assert store.credential(secret_digest(made.login_token)) is None
    assert [listed.user for listed in store.users()] == [bob]
    with pytest.raises(NoSuchUser):
        store.remove("ann", not_before=int(NOW))
    store.add(new_user("ann", Limits(), NOW), new_secrets().records())  # the name is free again, with a new id
    again = store.user("ann")
    assert again is not None and again.id != ann.id


def test_sqlite_keeps_revocations_for_the_broker_within_the_horizon(tmp_path: Path) -> None:
    store = SqliteUserStore(tmp_path / USERS_DB_FILE)
    ann, bob = new_user("ann", Limits(), NOW), new_user("bob", Limits(), NOW)
    store.add(ann, new_secrets().records())
    store.add(bob, new_secrets().records())
    store.rotate("ann", new_secrets().records(), not_before=int(NOW) + 1)
    store.rotate("ann", new_secrets().records(), not_before=int(NOW) - 100)  # never loosens
    store.remove("bob", not_before=int(NOW) + 2)
    assert store.revocations(NOW) == {ann.id: int(NOW) + 1, bob.id: int(NOW) + 2}
    assert store.revocations(NOW + 3600) == {}


def test_redis_writes_the_shared_revocations_itself(redis_server: RedisServer, tmp_path: Path) -> None:
    store = open_store(tmp_path, redis_server.url)
    assert isinstance(store, RedisUserStore)
    ann = new_user("ann", Limits(), NOW)
    store.add(ann, new_secrets().records())
    store.remove("ann", not_before=int(NOW) + 1)
    import redis

    shared = redis.Redis.from_url(redis_server.url).hgetall(REVOCATIONS_KEY)
    assert shared == {ann.id.encode(): str(int(NOW) + 1).encode()}
    assert store.revocations(NOW) == {}
    assert not (tmp_path / USERS_DB_FILE).exists()


def test_the_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    SqliteUserStore(tmp_path / USERS_DB_FILE).close()
    path = tmp_path / USERS_DB_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]


def test_an_old_file_is_migrated_and_keeps_its_users(tmp_path: Path) -> None:
    path = tmp_path / USERS_DB_FILE
    first = SqliteUserStore(path, migrations=MIGRATIONS[:1])
    assert first.version == 1
    user = new_user("ann", Limits(max_tokens=10), NOW)
    first.add(user, new_secrets().records())
    first.close()
    with sqlite3.connect(path) as db:
        assert "revocations" not in {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    store = SqliteUserStore(path)
    assert store.version == len(MIGRATIONS) and store.user("ann") == user
    store.remove("ann", not_before=int(NOW) + 1)
    assert store.revocations(NOW) == {user.id: int(NOW) + 1}
    store.close()
    SqliteUserStore(path).close()  # opening a current file again changes nothing


def test_a_newer_file_is_refused_not_guessed_at(tmp_path: Path) -> None:
    path = tmp_path / USERS_DB_FILE
    SqliteUserStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="newer"):
        SqliteUserStore(path)


def test_a_damaged_file_is_refused_with_a_sentence(tmp_path: Path) -> None:
    (tmp_path / USERS_DB_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot be read"):
        SqliteUserStore(tmp_path / USERS_DB_FILE)


def _writer(path: str, prefix: str, count: int) -> None:
    store = SqliteUserStore(Path(path))
    for index in range(count):
        store.add(new_user(f"{prefix}{index}", Limits(), NOW), new_secrets().records())
        if index % 3 == 0:
            store.set_limits(f"{prefix}{index}", Limits(streams=1 + index))
    store.close()


def test_two_writers_in_two_processes_both_land_everything(tmp_path: Path) -> None:
    """serve's broker and a `users` command write at once: the busy timeout makes one wait its turn.
    Both also open (and so migrate) a file that does not exist yet, at the same moment."""
    path = tmp_path / USERS_DB_FILE
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(path), prefix, 40)) for prefix in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(300)
        assert writer.exitcode == 0
    store = SqliteUserStore(path)
    names = [listed.user.name for listed in store.users()]
    assert len(names) == 80 and len(set(names)) == 80
    assert store.user("a3") is not None and store.user("a3").limits.streams == 4  # type: ignore[union-attr]


def test_a_new_file_another_process_is_writing_is_waited_for_not_called_unreadable(tmp_path: Path) -> None:
    """SQLite does not wait its busy timeout for the switch to WAL: a store opened while another
    connection (serve's broker, a `users` command) holds the new file's write lock was refused as a file
    that cannot be read (what made the two-writers test fail, 77 of 300 simultaneous first opens here)."""
    path = tmp_path / USERS_DB_FILE
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        store = SqliteUserStore(path)
        assert store.users() == []
        store.close()
    finally:
        release.join()
        other.close()
