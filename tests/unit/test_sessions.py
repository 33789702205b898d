from __future__ import annotations

import pytest

from broker.sessions import MAX_SESSIONS, AccessTokens, RateLimiter, SessionStore


class TestAccessTokens:
    def test_the_right_token_names_its_user(self) -> None:
        tokens = AccessTokens({"alpha-token-0001": "alice", "bravo-token-0002": "bob"})
        assert tokens.user_for("alpha-token-0001") == "alice"
        assert tokens.user_for("bravo-token-0002") == "bob"

    @pytest.mark.parametrize("presented", [None, "", "alpha-token-000", "alpha-token-00012", "ALPHA-TOKEN-0001"])
    def test_anything_else_names_nobody(self, presented: str | None) -> None:
        assert AccessTokens.single("alpha-token-0001").user_for(presented) is None

    def test_non_ascii_is_compared_not_crashed_on(self) -> None:
        assert AccessTokens.single("alpha-token-0001").user_for("älpha-token-0001") is None

    def test_the_default_user_is_local(self) -> None:
        assert AccessTokens.single("alpha-token-0001").user_for("alpha-token-0001") == "local"

    def test_an_empty_token_cannot_be_configured(self) -> None:
        with pytest.raises(ValueError):
            AccessTokens({"": "local"})


class TestSessionStore:
    def test_a_session_names_its_user_until_dropped(self) -> None:
        store = SessionStore()
        session_id = store.create("local")
        assert len(session_id) >= 40
        assert store.user_for(session_id) == "local"
        store.drop(session_id)
        assert store.user_for(session_id) is None

    def test_ids_are_unique(self) -> None:
        store = SessionStore()
        assert len({store.create("local") for _ in range(100)}) == 100

    @pytest.mark.parametrize("session_id", [None, "", "made-up"])
    def test_unknown_ids_name_nobody(self, session_id: str | None) -> None:
        store = SessionStore()
        store.create("local")
        assert store.user_for(session_id) is None
        store.drop(session_id)
        assert len(store) == 1

    def test_the_oldest_session_goes_when_the_store_is_full(self) -> None:
        store = SessionStore(max_sessions=3)
        first = store.create("a")
        rest = [store.create(user) for user in ("b", "c", "d")]
        assert store.user_for(first) is None
        assert [store.user_for(s) for s in rest] == ["b", "c", "d"]
        assert len(store) == 3

    def test_the_default_bound(self) -> None:
        store = SessionStore()
        for _ in range(MAX_SESSIONS + 5):
            store.create("local")
        assert len(store) == MAX_SESSIONS


class TestRateLimiter:
    def test_a_burst_passes_then_the_next_waits(self) -> None:
        limiter = RateLimiter(per_minute=60, burst=3)
        assert [limiter.acquire("u", 100.0) for _ in range(3)] == [0, 0, 0]
        assert limiter.acquire("u", 100.0) == 1

    def test_retry_after_is_the_whole_seconds_until_one_token(self) -> None:
        limiter = RateLimiter(per_minute=6, burst=1)
        assert limiter.acquire("u", 0.0) == 0
        assert limiter.acquire("u", 0.0) == 10
        assert limiter.acquire("u", 4.5) == 6
        assert limiter.acquire("u", 10.0) == 0

    def test_refill_is_capped_at_the_burst(self) -> None:
        limiter = RateLimiter(per_minute=60, burst=2)
        limiter.acquire("u", 0.0)
        assert [limiter.acquire("u", 1000.0) for _ in range(3)] == [0, 0, 1]

    def test_users_have_separate_buckets(self) -> None:
        limiter = RateLimiter(per_minute=60, burst=1)
        assert limiter.acquire("alice", 0.0) == 0
        assert limiter.acquire("alice", 0.0) == 1
        assert limiter.acquire("bob", 0.0) == 0

    def test_a_clock_going_back_gives_no_extra_tokens(self) -> None:
        limiter = RateLimiter(per_minute=60, burst=1)
        assert limiter.acquire("u", 50.0) == 0
        assert limiter.acquire("u", 10.0) == 1
        assert limiter.acquire("u", 50.5) == 1
        assert limiter.acquire("u", 51.0) == 0

    @pytest.mark.parametrize(("per_minute", "burst"), [(0, 1), (1, 0)])
    def test_limits_must_be_positive(self, per_minute: int, burst: int) -> None:
        with pytest.raises(ValueError):
            RateLimiter(per_minute=per_minute, burst=burst)
