"""`UserStore` in the fleet's Redis, so that every broker knows the same users and secrets.

Layout (a Redis ACL user needs `~ld:users` `~ld:user:*` `~ld:secret:*` beside the revocations):

- `USERS_KEY`, a hash: normalised name -> user id (what makes a name unique);
- `ld:user:<id>`, a string: the user's record as JSON (name, limits, created, generation, and each
  secret's digest and fingerprint, never a secret);
- `ld:secret:<digest>`, a string: `{"user": id, "kind": kind}`, what a presented secret resolves by;
- budgets' windows, reservations and the usage ledger: `llama_direct.budget_redis`.

Every change is one optimistic transaction (`WATCH` the name index and the user's record, then
`MULTI`): two `users` commands at two machines never leave half a user. A removal or rotation writes
the shared revocation in the same `MULTI` (`REVOKE_SCRIPT`, which also announces it), so every
broker's watch wakes its gate at once; `revocations` is therefore empty here. Every Redis error is
`SharedStateUnavailable`, as for the brokers' other shared state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from llama_direct import budget_redis
from llama_direct.budgets import Budget, Exhausted, LedgerRow, Reservation, UsageReport
from llama_direct.refusals import SharedStateUnavailable
from llama_direct.shared_replay import DEFAULT_TIMEOUT, REVOCATIONS_CHANNEL, REVOCATIONS_KEY, REVOKE_SCRIPT
from llama_direct.users import Admit, Credential, Limits, Listed, NoSuchUser, SecretRecord, User, UserExists

if TYPE_CHECKING:
    import redis
    import redis.client

USERS_KEY = "ld:users"
USER_PREFIX = "ld:user:"
SECRET_PREFIX = "ld:secret:"

T = TypeVar("T")


class RedisUserStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @classmethod
    def from_url(cls, url: str, timeout: float = DEFAULT_TIMEOUT) -> RedisUserStore:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return cls(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                        retry=Retry(NoBackoff(), 0)))

    def add(self, user: User, secrets: Sequence[SecretRecord], admit: Admit | None = None) -> None:
        def work(pipe: redis.client.Pipeline) -> None:
            if pipe.hexists(USERS_KEY, user.name):
                raise UserExists(user.name)
            if admit is not None:  # every add and removal changes USERS_KEY, watched: the count holds to MULTI
                admit(_without_secrets(pipe))
            pipe.multi()
            pipe.hset(USERS_KEY, user.name, user.id)
            pipe.set(USER_PREFIX + user.id, _encode(user, secrets))
            for record in secrets:
                pipe.set(SECRET_PREFIX + record.digest, json.dumps({"user": user.id, "kind": record.kind}))

        self._transaction(work, USERS_KEY)

    def user(self, name: str) -> User | None:
        user_id = self._call(lambda: self._redis.hget(USERS_KEY, name))
        return self.user_by_id(_text(user_id)) if user_id is not None else None

    def user_by_id(self, user_id: str) -> User | None:
        raw = self._call(lambda: self._redis.get(USER_PREFIX + user_id))
        return _decode(raw)[0] if raw is not None else None

    def users(self) -> list[Listed]:
        ids = self._call(lambda: self._redis.hvals(USERS_KEY))
        if not ids:
            return []
        raws = self._call(lambda: self._redis.mget([USER_PREFIX + _text(user_id) for user_id in ids]))
        found = [_decode(raw) for raw in raws if raw is not None]
        return sorted((Listed(user, {kind: fp for kind, (_, fp) in kept.items()}) for user, kept in found),
                      key=lambda listed: listed.user.name)

    def set_limits(self, name: str, limits: Limits) -> User:
        def work(pipe: redis.client.Pipeline) -> User:
            user, kept = self._watched(pipe, name)
            changed = User(user.id, user.name, limits, user.created, user.generation)
            pipe.multi()
            pipe.set(USER_PREFIX + user.id, _encode_kept(changed, kept))
            return changed

        return self._transaction(work, USERS_KEY)

    def rotate(self, name: str, secrets: Sequence[SecretRecord], not_before: int) -> User:
        def work(pipe: redis.client.Pipeline) -> User:
            user, kept = self._watched(pipe, name)
            rotated = User(user.id, user.name, user.limits, user.created, user.generation + 1)
            pipe.multi()
            pipe.delete(*(SECRET_PREFIX + digest for digest, _ in kept.values()))
            pipe.set(USER_PREFIX + user.id, _encode(rotated, secrets))
            for record in secrets:
                pipe.set(SECRET_PREFIX + record.digest, json.dumps({"user": user.id, "kind": record.kind}))
            pipe.eval(REVOKE_SCRIPT, 1, REVOCATIONS_KEY, user.id, not_before, REVOCATIONS_CHANNEL)
            return rotated

        return self._transaction(work, USERS_KEY)

    def remove(self, name: str, not_before: int) -> User:
        def work(pipe: redis.client.Pipeline) -> User:
            user, kept = self._watched(pipe, name)
            pipe.multi()
            pipe.delete(USER_PREFIX + user.id, *(SECRET_PREFIX + digest for digest, _ in kept.values()))
            pipe.hdel(USERS_KEY, user.name)
            pipe.eval(REVOKE_SCRIPT, 1, REVOCATIONS_KEY, user.id, not_before, REVOCATIONS_CHANNEL)
            return user

        return self._transaction(work, USERS_KEY)

    def credential(self, digest: str) -> Credential | None:
        raw = self._call(lambda: self._redis.get(SECRET_PREFIX + digest))
        if raw is None:
            return None
        entry = json.loads(raw)
        user = self.user_by_id(str(entry["user"]))
        kind = str(entry["kind"])
        # The record must still name this digest: a removal deletes both in one MULTI, but say so here too.
        if user is None or self._digest_of(user.id, kind) != digest:
            return None
        return Credential(user=user, kind=kind)

    def revocations(self, now: float) -> dict[str, int]:
        """Written to the shared revocations directly: the brokers read them there."""
        return {}

    def reserve(self, reservation: Reservation, budget: Budget, asked: int, now: float) -> int | Exhausted:
        return budget_redis.reserve(self._transaction, reservation, budget, asked, now)

    def report(self, reports: Sequence[UsageReport], now: float) -> None:
        """One optimistic transaction a report: each watches only its own user's keys."""
        for usage in reports:
            budget_redis.report(self._transaction, usage, now)

    def budget_windows(self, user_id: str, now: float) -> tuple[int, int]:
        return budget_redis.windows(self._transaction, user_id, now)

    def ledger(self, since_day: int, user_id: str | None = None) -> list[LedgerRow]:
        return list(self._call(lambda: budget_redis.ledger(self._redis, since_day, user_id)))

    def close(self) -> None:
        self._redis.close()

    def _digest_of(self, user_id: str, kind: str) -> str | None:
        raw = self._call(lambda: self._redis.get(USER_PREFIX + user_id))
        return _decode(raw)[1].get(kind, (None, None))[0] if raw is not None else None

    @staticmethod
    def _watched(pipe: redis.client.Pipeline, name: str) -> tuple[User, dict[str, tuple[str, str]]]:
        """The named user's record, its key watched too (the transaction retries if either changes)."""
        user_id = pipe.hget(USERS_KEY, name)
        if user_id is None:
            raise NoSuchUser(name)
        key = USER_PREFIX + _text(user_id)
        pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.watch unannotated
        raw = pipe.get(key)
        if raw is None:
            raise NoSuchUser(name)
        return _decode(raw)

    def _transaction(self, work: Callable[[redis.client.Pipeline], T], *watched: str) -> T:
        """`work` run under `WATCH`, again whenever a watched key changed before its `MULTI` ran; its value
        is the answer (redis-py's annotation says the callable returns None, which `value_from_callable` is not)."""
        run = cast("Callable[[redis.client.Pipeline], None]", work)
        result: T = self._call(lambda: self._redis.transaction(run, *watched, value_from_callable=True))
        return result

    @staticmethod
    def _call(call: Callable[[], Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return call()
        except (RedisError, OSError):
            raise SharedStateUnavailable() from None


def _without_secrets(pipe: redis.client.Pipeline) -> int:
    ids = pipe.hvals(USERS_KEY)
    raws = pipe.mget([USER_PREFIX + _text(user_id) for user_id in ids]) if ids else []
    return sum(1 for raw in raws if raw is not None and not _decode(raw)[1])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode(user: User, secrets: Sequence[SecretRecord]) -> str:
    return _encode_kept(user, {record.kind: (record.digest, record.fingerprint) for record in secrets})


def _encode_kept(user: User, kept: dict[str, tuple[str, str]]) -> str:
    limits = user.limits
    return json.dumps({
        "id": user.id, "name": user.name, "created": user.created, "generation": user.generation,
        "limits": {"models": list(limits.models) if limits.models is not None else None,
                   "tokens_per_day": limits.tokens_per_day, "tokens_per_minute": limits.tokens_per_minute,
                   "streams": limits.streams, "max_tokens": limits.max_tokens},
        "secrets": {kind: {"digest": digest, "fingerprint": fingerprint}
                    for kind, (digest, fingerprint) in kept.items()},
    })


def _decode(raw: object) -> tuple[User, dict[str, tuple[str, str]]]:
    record = json.loads(_text(raw))
    limits = dict(record["limits"])
    if limits["models"] is not None:
        limits["models"] = tuple(limits["models"])
    user = User(id=record["id"], name=record["name"], limits=Limits(**limits), created=float(record["created"]),
                generation=int(record["generation"]))
    kept = {str(kind): (str(entry["digest"]), str(entry["fingerprint"])) for kind, entry in record["secrets"].items()}
    return user, kept
