"""Reservations at the broker: what a grant may generate, taken from its user's budget as it is minted.

A named user with `tokens_per_day` or `tokens_per_minute` reserves each grant's `max_tokens` for a
route that generates (negotiation's and the baseline's alike), capped at what the windows have left,
under the grant's own id, which the gate names when it reports the stream's end (`USAGE_PATH`,
`settle`). The owner and users without token limits reserve nothing; their usage is still recorded
in the ledger when the gate reports it. A user with their own `streams` reserves in the same way, so
that their reservations count their open streams across every broker and gate of a fleet: at that
many, negotiation and the baseline are 429 `too_many_streams`. The arithmetic and its guarantees are
`llama_direct.budgets`'.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from broker.access import Caller
from broker.core import BrokerCore
from broker.models import choose_model
from broker.negotiation_options import Options
from broker.policy import Policy
from llama_direct.budgets import (
    GENERATING_FORMATS,
    MAX_USAGE_DAYS,
    Budget,
    Exhausted,
    Reservation,
    StreamsFull,
    UsageReport,
    day_name,
    day_of,
    ledger_day,
    parse_day,
    remaining,
    start_deadline,
)
from llama_direct.documents import MyUsage
from llama_direct.lanes import LaneRoute
from llama_direct.refusals import INVALID_OPTION, TOO_MANY_STREAMS, BudgetExhausted, RateLimited, RequestRefusal
from llama_direct.users import Limits

DIRECT_LANE = "direct"
BASELINE_LANE = "baseline"
"""The ledger's lanes: a grant the client takes to the gate, or the broker's own request for it."""


def budget_of(limits: Limits | None) -> Budget | None:
    """The token windows and the stream count that bind a caller; None: no reservation is needed."""
    if limits is None:
        return None
    budget = Budget(per_day=limits.tokens_per_day, per_minute=limits.tokens_per_minute, streams=limits.streams)
    return budget if budget.bounded or budget.streams is not None else None


def reserve(core: BrokerCore, *, user: str, limits: Limits | None, asked: int, model: str, route: LaneRoute,
            lane: str, jti: str, minted_at: float, ttl: int) -> int:
    """The `max_tokens` the grant may name: `asked`, or what the user's budget has left if less
    (reserved under `jti` until the gate reports its end, or its start deadline passes unstarted);
    `BudgetExhausted` (429, Retry-After) under 16 left, 429 `too_many_streams` at the user's `streams`."""
    budget = budget_of(limits)
    if budget is None or route.body not in GENERATING_FORMATS:
        return asked
    now = core.clock()
    held = Reservation(jti, user, model, route.name, lane, 0, 0, 0, start_deadline(math.floor(minted_at) + ttl), now)
    amount = core.users.reserve(held, budget, asked, now)
    if isinstance(amount, StreamsFull):
        raise RateLimited(amount.retry_after, TOO_MANY_STREAMS)
    if isinstance(amount, Exhausted):
        raise BudgetExhausted(amount.retry_after)
    return amount


def settle(core: BrokerCore, reports: Sequence[UsageReport]) -> None:
    """A gate's reports (`POST /usage`, one body): each reservation held or settled, the ledger written."""
    core.users.report(reports, core.clock())


def negotiation_policy(core: BrokerCore, caller: Caller, options: Options, *, policy: Policy, allowed: Sequence[str],
                       live: bool, jti: str, minted_at: float) -> Policy:
    """The policy a negotiation grants under: its cap lowered to what the caller's budget reserved for
    this grant. Nothing is reserved when the lane is off (`live` false: the client goes to the
    baseline, which reserves for itself)."""
    if not live:
        return policy
    cap = policy.max_tokens_cap
    asked = min(options.max_tokens, cap) if options.max_tokens is not None else cap
    amount = reserve(core, user=caller.user, limits=caller.limits, asked=asked, model=choose_model(options.model,
                     allowed), route=options.lane, lane=DIRECT_LANE, jti=jti, minted_at=minted_at, ttl=policy.ttl)
    return policy if amount >= cap else dataclasses.replace(policy, max_tokens_cap=amount)


def my_usage(core: BrokerCore, caller: Caller, since: list[str]) -> MyUsage:
    """`GET /v1/usage`: the caller's own windows and ledger rows (`since`: the query's values)."""
    now = core.clock()
    today = day_of(now)
    first = today
    if since:
        try:
            first = parse_day(since[0]) if len(since) == 1 else -1
        except ValueError:
            first = -1
        if not today - MAX_USAGE_DAYS <= first <= today:
            raise RequestRefusal(INVALID_OPTION, "since")
    limits = caller.limits
    budget = budget_of(limits) or Budget(None, None)
    left = remaining(budget, *core.users.budget_windows(caller.user, now))
    return MyUsage(sub=caller.user, name=caller.name, tokens_per_day=budget.per_day,
                   tokens_per_minute=budget.per_minute, day_used=left.day_used, day_left=left.day_left,
                   minute_used=left.minute_used, minute_left=left.minute_left, since=day_name(first),
                   rows=[ledger_day(row) for row in core.users.ledger(first, caller.user)])
