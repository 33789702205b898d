"""Uses left per token, and revocations: the gate's state about tokens. Pure: callers pass `now`.

A jti is remembered only until its token can no longer pass `verify` (`exp` plus the leeway), so the
store holds at most the tokens minted in the last `MAX_TTL_SECONDS + LEEWAY_SECONDS`, and forgetting
costs O(log n) per token, paid by the calls that find it due.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Protocol

from llama_direct.tokens import LEEWAY_SECONDS, MAX_TTL_SECONDS, Claims


class ReplayStore(Protocol):
    def consume(self, jti: str, uses: int, forget_at: float, now: float) -> bool:
        """Spend one use of `jti`, which starts with `uses`; False when none is left."""
        ...


class MemoryReplayStore:
    """One process's store: right for one gate; several gates sharing an audience need a shared one.

    When `max_entries` live tokens are held, new tokens are refused rather than memory grown:
    failing closed costs a retry, failing open would let a token be spent twice.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._max_entries = max_entries
        self._uses_left: dict[str, int] = {}
        self._forget: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._uses_left)

    def consume(self, jti: str, uses: int, forget_at: float, now: float) -> bool:
        """A token past `forget_at` is refused: it could not be remembered, and `verify` refuses it anyway."""
        self._purge(now)
        left = self._uses_left.get(jti)
        if left is None:
            if uses < 1 or forget_at <= now or len(self._uses_left) >= self._max_entries:
                return False
            self._uses_left[jti] = uses - 1
            heapq.heappush(self._forget, (forget_at, jti))
            return True
        if left < 1:
            return False
        self._uses_left[jti] = left - 1
        return True

    def _purge(self, now: float) -> None:
        forget = self._forget
        while forget and forget[0][0] <= now:
            del self._uses_left[heapq.heappop(forget)[1]]


class Revocations:
    """sub -> not-before: the user's tokens issued before that second are refused.

    A revocation matters only while a token issued before it can still be live, so `prune` drops it
    `MAX_TTL_SECONDS + LEEWAY_SECONDS` later.
    """

    def __init__(self, not_before: dict[str, int] | None = None) -> None:
        self._not_before: dict[str, int] = dict(not_before or {})

    def __len__(self) -> int:
        return len(self._not_before)

    def revoke(self, sub: str, not_before: float) -> None:
        """Refuse `sub`'s tokens issued before `not_before`, rounded up to a whole second.

        `iat` is the whole second a token was minted in, so a token minted a moment before a logout
        has an `iat` below the rounded-up time: it is refused. A later revocation never loosens an
        earlier one.
        """
        second = math.ceil(not_before)
        if second > self._not_before.get(sub, second - 1):
            self._not_before[sub] = second

    def is_revoked(self, claims: Claims) -> bool:
        not_before = self._not_before.get(claims.sub)
        return not_before is not None and claims.iat < not_before

    def prune(self, now: float) -> None:
        horizon = now - MAX_TTL_SECONDS - LEEWAY_SECONDS
        self._not_before = {sub: nb for sub, nb in self._not_before.items() if nb > horizon}

    def to_dict(self) -> dict[str, Any]:
        return {"not_before": dict(self._not_before)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Revocations:
        """Read what `to_dict` wrote (the gate pulls it from the broker); a bad shape is a ValueError."""
        entries = data.get("not_before") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or not all(
            isinstance(sub, str) and isinstance(nb, int) and not isinstance(nb, bool)
            for sub, nb in entries.items()
        ):
            raise ValueError("revocations must be {'not_before': {sub: unix seconds}}")
        return cls(entries)
