"""Who owns which resumable conversation, so one user cannot resume or cancel another's.

Pure apart from the random id: `now` comes from the caller. Bounded and expiring, in memory: a
broker restart forgets them, and their streams can then only run to their end.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict

CONVERSATION_TTL_SECONDS = 3600
"""How long a resumable conversation may be resumed or cancelled by its owner."""
MAX_CONVERSATIONS = 10_000


class Conversations:
    """Conversation id -> owner, for resumable streams, so one user cannot resume or cancel another's."""

    def __init__(self, ttl: float = CONVERSATION_TTL_SECONDS, max_entries: int = MAX_CONVERSATIONS) -> None:
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._ttl = ttl
        self._max = max_entries

    def open(self, user: str, now: float) -> str:
        self._expire(now)
        conversation_id = secrets.token_urlsafe(16)
        self._owners[conversation_id] = (user, now + self._ttl)
        while len(self._owners) > self._max:
            self._owners.popitem(last=False)
        return conversation_id

    def owner(self, conversation_id: str, now: float) -> str | None:
        entry = self._owners.get(conversation_id)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def _expire(self, now: float) -> None:
        while self._owners:
            _, (_, forget_at) = next(iter(self._owners.items()))
            if forget_at > now:
                return
            self._owners.popitem(last=False)

    def __len__(self) -> int:
        return len(self._owners)

