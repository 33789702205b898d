"""Who has how many streams open, and which conversation streams nobody reads (pure: no I/O, no clock).

Two bounds on what a logged-in user can leave running in llama-server:

- **Streams per user.** Each chat or resume the gate relays counts for its token's `sub` until it
  ends; one past `limit` (or the user's own, which their grant carries) is refused (429
  `too_many_streams`) before anything reaches llama-server.
  The users in `uncapped` (the owner) are counted but never refused.
- **A resume window.** A resumable stream (one that names a conversation) outlives its connection
  by design, so a closed tab would leave it generating to the length cap. When its client leaves
  before the end, it becomes an *orphan* with a deadline `window` seconds away; a resume of that
  conversation before the deadline adopts it (and, if that client leaves too, a new deadline
  starts); past the deadline `expire` hands it to the shell, which cancels it upstream.

An orphan still counts against its user until it is resumed, cancelled or expired, so closing
connections cannot get around the cap. Callers pass `now` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from llama_direct.refusals import TOO_MANY_STREAMS, RequestRefusal

H = TypeVar("H")


class Stream(Generic[H]):
    """One relayed chat or resume: its user, its conversation (None: not resumable), and the
    upstream that took it (`holder`, set once connected; None while connecting)."""

    __slots__ = ("conversation", "holder", "user")

    def __init__(self, user: str, conversation: str | None) -> None:
        self.user = user
        self.conversation = conversation
        self.holder: H | None = None


@dataclass(frozen=True)
class Orphan(Generic[H]):
    """A conversation stream whose client left: cancelled on `holder` at `deadline` unless resumed."""

    user: str
    conversation: str
    holder: H
    deadline: float


class StreamLedger(Generic[H]):
    """Per-user stream counts and the orphans waiting out their resume window."""

    def __init__(self, *, limit: int, uncapped: frozenset[str], window: float) -> None:
        self.limit = limit
        self.uncapped = uncapped
        self.window = window
        self.counts: dict[str, int] = {}
        self.orphans: dict[str, Orphan[H]] = {}

    def open(self, user: str, conversation: str | None, limit: int | None = None) -> Stream[H]:
        """Count a new stream, or refuse it: a resume of an orphan takes the orphan's place uncounted.
        `limit` is the user's own (their grant's `streams`), in place of the gate's `limit`."""
        orphan = self.orphans.pop(conversation, None) if conversation is not None else None
        if orphan is not None:
            if orphan.user == user:
                return Stream(user, conversation)
            self._release(orphan.user)
        count = self.counts.get(user, 0)
        if count >= (self.limit if limit is None else limit) and user not in self.uncapped:
            raise RequestRefusal(TOO_MANY_STREAMS)
        self.counts[user] = count + 1
        return Stream(user, conversation)

    def close(self, stream: Stream[H], *, finished: bool, now: float) -> Orphan[H] | None:
        """The stream's relay ended: `finished` (answered, or failed upstream) frees its count; a client
        that left a conversation stream it held an upstream for makes it an orphan, returned."""
        conversation, holder = stream.conversation, stream.holder
        if finished or conversation is None or holder is None:
            self._release(stream.user)
            return None
        orphan = Orphan(stream.user, conversation, holder, now + self.window)
        replaced = self.orphans.pop(conversation, None)
        if replaced is not None:  # two relays of one conversation both left: it counts once
            self._release(replaced.user)
        self.orphans[conversation] = orphan
        return orphan

    def cancelled(self, conversation: str | None) -> None:
        """The owner stopped the conversation (`DELETE /v1/stream`): no window to wait out."""
        orphan = self.orphans.pop(conversation, None) if conversation is not None else None
        if orphan is not None:
            self._release(orphan.user)

    def expire(self, now: float) -> list[Orphan[H]]:
        """The orphans whose window has passed, forgotten here: the caller cancels each upstream."""
        due = [orphan for orphan in self.orphans.values() if orphan.deadline <= now]
        for orphan in due:
            del self.orphans[orphan.conversation]
            self._release(orphan.user)
        return due

    def _release(self, user: str) -> None:
        count = self.counts.get(user, 0) - 1
        if count > 0:
            self.counts[user] = count
        else:
            self.counts.pop(user, None)
