"""Token budgets that concurrent streams cannot overshoot: reservations and their settlement (pure: no
I/O; callers pass `now`).

A user's `tokens_per_day` (UTC day) and `tokens_per_minute` count **generated** tokens. Checking a
budget when a request starts lets N concurrent streams each see the whole remainder; instead each
grant **reserves** its `max_tokens` against both windows at negotiation, and the grant is capped at
what remains, so the sum of what the user's open grants may generate never exceeds the budget.
Below `MIN_GRANT` remaining, negotiation is refused (429 `budget_exhausted`, with the seconds until
the window that is short turns over).

When the gate reports a stream's end, the reservation is **settled**: the window is charged what
llama-server reported generating, and the unused part returns. A stream whose end the gate did not see
(the client left, the gate stopped) is charged its whole reservation. A grant the gate never
started returns in full once it can no longer start (`start_deadline`). A started reservation the gate
never settled is kept charged in full; the store forgets it after `FORGET_STARTED_SECONDS`.

A user's `streams` (their streams open at once, fleet-wide) is counted by the same reservations: every
generating grant of such a user reserves, and holds a stream from its minting until its end is
settled, or until it can no longer start (`holds_stream`). At `streams` held, negotiation is refused
(429 `too_many_streams`, `StreamsFull`), in the same step that would reserve, so concurrent
negotiations at several brokers never hold more. A started stream whose end is never reported stops
counting after `STREAM_SLOT_SECONDS`.

The windows are fixed: the UTC day (`day_of`) and the minute since the epoch (`minute_of`). A
reservation remembers the windows it was charged to, and its settlement corrects those same ones.
The stores (`llama_direct.user_store`, `llama_direct.user_store_redis`) hold the counters and run
these functions inside one transaction (or one Lua script), so two brokers share one budget.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

from llama_direct.documents import LedgerDay
from llama_direct.tokens import LEEWAY_SECONDS

GENERATING_FORMATS = frozenset({"chat", "completions", "responses", "messages"})
"""The lane body formats that generate (`llama_direct.lanes.BodyFormat`): the only ones that reserve and
report. A resume re-reads a stream its own grant already reserved for, and reserves nothing."""
MIN_GRANT = 16
"""Below this many tokens remaining, a grant would be of no use to anyone: refused instead."""
START_GRACE_SECONDS = 30
"""After a grant's expiry (and the gate's leeway), how long its start report may still be on its way."""
FORGET_STARTED_SECONDS = 86_400
"""A started reservation no end report settled (its gate stopped) is dropped, charged in full, after this."""
DAY_SECONDS = 86_400
MINUTE_SECONDS = 60
_EPOCH = datetime.date(1970, 1, 1)


def day_of(now: float) -> int:
    """The UTC day `now` falls in, as days since the epoch."""
    return math.floor(now) // DAY_SECONDS


def minute_of(now: float) -> int:
    return math.floor(now) // MINUTE_SECONDS


def day_name(day: int) -> str:
    """The UTC date of a day number, as the ledger and `usage` show it (`2026-12-07`)."""
    return (_EPOCH + datetime.timedelta(days=day)).isoformat()


def start_deadline(expires_at: int) -> float:
    """When a grant that expires at `expires_at` can no longer have started a stream anywhere."""
    return expires_at + LEEWAY_SECONDS + START_GRACE_SECONDS


@dataclass(frozen=True)
class Budget:
    """A user's token limits per window, and the streams they may have open at once (`streams`, counted
    by their reservations: `holds_stream`); None: no bound there."""

    per_day: int | None
    per_minute: int | None
    streams: int | None = None

    @property
    def bounded(self) -> bool:
        """Whether a token window is bounded (what HAProxy cannot enforce)."""
        return self.per_day is not None or self.per_minute is not None


@dataclass(frozen=True)
class Exhausted:
    """Less than `MIN_GRANT` remains: `retry_after` seconds until the short window turns over."""

    retry_after: int


@dataclass(frozen=True)
class StreamsFull(Exhausted):
    """The user has `Budget.streams` streams open (or granted and still able to start): no grant now."""


STREAM_SLOT_SECONDS = 3_600
"""A stream reported started whose end no report settled (its gate stopped, or the report was lost)
stops counting against its user's `streams` this long after its grant was minted: longer than a reply
runs, short enough that a lost report does not shut the user out for the day."""
STREAM_RETRY_SECONDS = 1
"""`StreamsFull`'s Retry-After: a stream's end reaches the broker moments after its last byte reached
the client, so a page's next tool round (which waits a 429's Retry-After once) gets in."""


def holds_stream(deadline: float | None, created: float, now: float) -> bool:
    """Whether a reservation counts as one of its user's open streams at `now`: a grant that can still
    start one (before its `deadline`; a grant is single-use, so one stream at most), or one reported
    started, until its end settles it or `STREAM_SLOT_SECONDS` after it was minted (`created`)."""
    if deadline is not None:
        return deadline > now
    return created > now - STREAM_SLOT_SECONDS


def grantable(budget: Budget, asked: int, day_used: int, minute_used: int, now: float,
              open_streams: int = 0) -> int | Exhausted:
    """How many tokens a grant asking `asked` may reserve, given what each window already holds
    (settled plus reserved) and how many streams the user holds (`holds_stream`); `StreamsFull` at the
    user's `streams`, `Exhausted` when under `MIN_GRANT` would remain."""
    if budget.streams is not None and open_streams >= budget.streams:
        return StreamsFull(STREAM_RETRY_SECONDS)
    remaining = asked
    retry_after = 0
    if budget.per_minute is not None:
        left = budget.per_minute - minute_used
        remaining = min(remaining, left)
        if left < MIN_GRANT:
            retry_after = max(retry_after, MINUTE_SECONDS - math.floor(now) % MINUTE_SECONDS)
    if budget.per_day is not None:
        left = budget.per_day - day_used
        remaining = min(remaining, left)
        if left < MIN_GRANT:
            retry_after = max(retry_after, DAY_SECONDS - math.floor(now) % DAY_SECONDS)
    if retry_after:
        return Exhausted(retry_after)
    return remaining


@dataclass(frozen=True)
class Reservation:
    """What one grant holds against its user's windows until its stream is settled."""

    jti: str
    user: str
    model: str
    route: str
    lane: str
    amount: int
    day: int
    minute: int
    deadline: float | None
    """When it returns in full unless started (`start_deadline`); None: started, held until settled."""
    created: float


def settled_charge(reservation: Reservation, completion: int | None) -> int:
    """What a settled stream costs its windows: what was generated, or its whole reservation when its end
    was not seen (`completion` None). The counters move by this minus `reservation.amount`."""
    return reservation.amount if completion is None else completion


def day_window(day: int) -> str:
    """The name a store keeps a user's day window under (`d<day>`); both stores use the same names."""
    return f"d{day}"


def minute_window(minute: int) -> str:
    return f"m{minute}"


def window_deltas(day: int, minute: int, delta: int) -> dict[str, int]:
    """One move of both windows a charge touches, by window name: a charge always counts in both."""
    return {day_window(day): delta, minute_window(minute): delta}


@dataclass(frozen=True)
class Settlement:
    """What an ended stream's report changes: the windows by their deltas, and the ledger row of `day`,
    counted with `completion` tokens generated."""

    deltas: dict[str, int]
    day: int
    completion: int


def settlement(held: Reservation | None, completion_tokens: int | None, now: float) -> Settlement:
    """The one rule both stores apply to an `ended` report: with its reservation, the unused part returns
    (`settled_charge`); without one (the owner, a user without token limits, a reservation already
    returned), what was generated is charged to `now`'s windows as it is."""
    if held is None:
        completion = completion_tokens or 0
        return Settlement(window_deltas(day_of(now), minute_of(now), completion), day_of(now), completion)
    charge = settled_charge(held, completion_tokens)
    return Settlement(window_deltas(held.day, held.minute, charge - held.amount), held.day, charge)


@dataclass(frozen=True)
class UsageReport:
    """What the gate reports of one lane request (`llama_direct.control.usage_report`)."""

    jti: str
    sub: str
    model: str
    route: str
    lane: str
    phase: str
    """`started` (the gate forwarded it) or `ended`."""
    prompt_tokens: int | None
    completion_tokens: int | None
    """None at `ended`: the end was not seen."""


@dataclass(frozen=True)
class LedgerRow:
    """One line of the usage ledger: a user's requests on one model, route and lane, in one UTC day."""

    user: str
    model: str
    route: str
    lane: str
    day: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    unseen: int
    """Requests whose end was not seen, each counted at its whole reservation in `completion_tokens`."""


@dataclass(frozen=True)
class Remaining:
    """A user's windows now: what each holds (settled and reserved) and what remains; None: unbounded."""

    day_used: int
    minute_used: int
    day_left: int | None
    minute_left: int | None


def remaining(budget: Budget, day_used: int, minute_used: int) -> Remaining:
    return Remaining(
        day_used=day_used,
        minute_used=minute_used,
        day_left=None if budget.per_day is None else max(0, budget.per_day - day_used),
        minute_left=None if budget.per_minute is None else max(0, budget.per_minute - minute_used),
    )


MY_USAGE_PATH = "/v1/usage"
"""`GET` by a logged-in user (session or bearer): their own usage and what their budget has left
(`llama_direct.documents.MyUsage`); `?since=YYYY-MM-DD` (UTC) for older days, today by default."""
MAX_USAGE_DAYS = 400
"""The furthest back `since` reaches: a bound on what one answer reads."""


def parse_day(text: str) -> int:
    """`YYYY-MM-DD` (UTC) as a day number; ValueError for anything else."""
    return (datetime.date.fromisoformat(text) - _EPOCH).days


def ledger_day(row: LedgerRow) -> LedgerDay:
    return LedgerDay(day=day_name(row.day), model=row.model, route=row.route, lane=row.lane, requests=row.requests,
                     prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens, unseen=row.unseen)
