"""Uses left per jti, forgetting at expiry, and revocations."""

from __future__ import annotations

import random
from typing import Any

import pytest

from broker.signing_keys import SigningKey
from llama_direct.keys import PublicKeySet
from llama_direct.replay import MemoryReplayStore, ReplayStore, Revocations
from llama_direct.tokens import LEEWAY_SECONDS, MAX_TTL_SECONDS, Claims, Grant, mint, verify

NOW = 1_700_000_000.0
KEY = SigningKey.generate("EdDSA")
KEYS = PublicKeySet({KEY.kid: (KEY.algorithm, KEY.public_key)})


def claims(sub: str = "alice", now: float = NOW, uses: int = 1) -> Claims:
    grant = Grant(routes=(("POST", "/v1/chat/completions"),), model="m", max_tokens=8, uses=uses)
    token = mint(KEY, issuer="b", audience="g", subject=sub, scope="chat", grant=grant, now=now).token
    return verify(token, keys=KEYS, audience="g", issuer="b", now=now)


def spend(store: ReplayStore, c: Claims, now: float) -> bool:
    """What the gate does after verify."""
    return store.consume(c.jti, c.grant.uses, c.exp + LEEWAY_SECONDS, now)


# --- uses ----------------------------------------------------------------------------------------------


def test_a_single_use_token_is_spent_after_one_use() -> None:
    store = MemoryReplayStore()
    c = claims()
    assert spend(store, c, NOW) is True
    assert spend(store, c, NOW + 1) is False
    assert spend(store, c, NOW + 2) is False
    assert spend(store, claims(), NOW + 2) is True


@pytest.mark.parametrize("uses", [2, 3, 7])
def test_a_token_has_exactly_its_uses(uses: int) -> None:
    store = MemoryReplayStore()
    c = claims(uses=uses)
    assert [spend(store, c, NOW) for _ in range(uses + 2)] == [True] * uses + [False, False]


def test_uses_are_counted_per_jti() -> None:
    store = MemoryReplayStore()
    assert store.consume("a", 1, NOW + 10, NOW) is True
    assert store.consume("b", 1, NOW + 10, NOW) is True
    assert store.consume("a", 1, NOW + 10, NOW) is False
    assert len(store) == 2


def test_a_later_use_cannot_raise_the_count() -> None:
    store = MemoryReplayStore()
    assert store.consume("a", 1, NOW + 10, NOW) is True
    assert store.consume("a", 5, NOW + 10, NOW) is False


@pytest.mark.parametrize("uses", [0, -1])
def test_a_token_with_no_uses_is_refused(uses: int) -> None:
    store = MemoryReplayStore()
    assert store.consume("a", uses, NOW + 10, NOW) is False
    assert len(store) == 0


# --- forgetting --------------------------------------------------------------------------------------------


def test_a_jti_is_remembered_until_its_token_can_no_longer_verify() -> None:
    store = MemoryReplayStore()
    c = claims()
    forget_at = c.exp + LEEWAY_SECONDS
    assert spend(store, c, NOW)
    assert spend(store, c, forget_at - 0.001) is False
    assert len(store) == 1
    assert store.consume("other", 1, forget_at + 30, forget_at) is True
    assert len(store) == 1


def test_a_token_already_past_its_forget_time_is_refused() -> None:
    store = MemoryReplayStore()
    assert store.consume("late", 1, NOW, NOW) is False
    assert store.consume("later", 1, NOW - 1, NOW) is False
    assert len(store) == 0


def test_only_the_entries_due_are_forgotten() -> None:
    store = MemoryReplayStore()
    order = list(range(100))
    random.Random(7).shuffle(order)
    for i in order:
        assert store.consume(f"jti-{i}", 1, NOW + i + 1, NOW)
    assert store.consume("probe", 1, NOW + 1000, NOW + 50.5) is True
    assert len(store) == 100 - 50 + 1
    assert store.consume("jti-50", 1, NOW + 51, NOW + 50.5) is False
    assert store.consume("jti-49", 1, NOW + 1000, NOW + 50.5) is True


def test_memory_stays_bounded_by_live_tokens() -> None:
    store = MemoryReplayStore()
    for second in range(2000):
        assert store.consume(f"jti-{second}", 1, NOW + second + 35, NOW + second)
    assert len(store) == 35


def test_a_full_store_refuses_new_tokens_until_some_expire() -> None:
    store = MemoryReplayStore(max_entries=2)
    assert store.consume("a", 1, NOW + 10, NOW)
    assert store.consume("b", 2, NOW + 20, NOW)
    assert store.consume("c", 1, NOW + 30, NOW) is False
    assert store.consume("b", 2, NOW + 20, NOW) is True
    assert store.consume("c", 1, NOW + 30, NOW + 10) is True
    assert len(store) == 2


# --- revocations ---------------------------------------------------------------------------------------------


def test_revocation_refuses_tokens_issued_before_it() -> None:
    revocations = Revocations()
    before = claims(now=NOW)
    revocations.revoke("alice", NOW + 10)
    assert revocations.is_revoked(before) is True
    assert revocations.is_revoked(claims(now=NOW + 10)) is False
    assert revocations.is_revoked(claims(sub="bob", now=NOW)) is False


def test_a_token_from_the_same_second_as_a_logout_is_revoked() -> None:
    revocations = Revocations()
    minted_just_before = claims(now=NOW + 0.3)
    revocations.revoke("alice", NOW + 0.9)
    assert revocations.to_dict() == {"not_before": {"alice": int(NOW) + 1}}
    assert revocations.is_revoked(minted_just_before) is True
    assert revocations.is_revoked(claims(now=NOW + 1.2)) is False


def test_a_later_revocation_never_loosens_an_earlier_one() -> None:
    revocations = Revocations()
    revocations.revoke("alice", NOW + 100)
    revocations.revoke("alice", NOW + 50)
    assert revocations.to_dict() == {"not_before": {"alice": int(NOW) + 100}}
    revocations.revoke("alice", NOW + 200)
    assert revocations.to_dict() == {"not_before": {"alice": int(NOW) + 200}}


def test_revocations_round_trip_through_a_dict() -> None:
    revocations = Revocations()
    revocations.revoke("alice", NOW)
    revocations.revoke("bob", NOW + 5)
    again = Revocations.from_dict(revocations.to_dict())
    assert again.to_dict() == {"not_before": {"alice": int(NOW), "bob": int(NOW) + 5}}
    assert again.is_revoked(claims(now=NOW - 1)) is True


@pytest.mark.parametrize(
    "data",
    [None, [], {}, {"not_before": []}, {"not_before": {"alice": "soon"}}, {"not_before": {"alice": 1.5}},
     {"not_before": {"alice": True}}],
)
def test_revocations_refuse_a_bad_shape(data: Any) -> None:
    with pytest.raises(ValueError):
        Revocations.from_dict(data)


def test_a_revocation_is_dropped_once_every_token_it_covers_has_expired() -> None:
    revocations = Revocations()
    revocations.revoke("alice", NOW)
    revocations.prune(NOW + MAX_TTL_SECONDS + LEEWAY_SECONDS - 1)
    assert len(revocations) == 1
    revocations.prune(NOW + MAX_TTL_SECONDS + LEEWAY_SECONDS)
    assert len(revocations) == 0
