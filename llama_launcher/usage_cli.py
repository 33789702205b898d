"""`llama-direct usage`: the usage ledger, per user, model, route, lane and UTC day, while serve runs or not.

It reads the same store as `llama-direct users` (the data dir's SQLite file, or the fleet's Redis with
`--redis-url-file` or `LLAMA_DIRECT_REDIS_URL`): what each gate reported of each stream's end
(`llama_direct.budgets`). A table on stdout, or with `--json` one object a line, each with the user's
name (the owner is `local`; a removed user's rows keep their id). Nothing in it is a prompt, a reply
or a secret.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llama_direct.budgets import (
    MAX_USAGE_DAYS,
    Budget,
    LedgerRow,
    day_name,
    day_of,
    parse_day,
    remaining,
)
from llama_direct.runtime import USERS_DB_FILE
from llama_direct.tokens import OWNER
from llama_direct.user_store import UserStore, open_store
from llama_direct.users import UserError, normalise_name
from llama_launcher.users_cli import on_store


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama-direct usage", description="Tokens used, per user, model, route, "
                                     "lane and UTC day, as the gates reported them.")
    parser.add_argument("--user", help="only this user (a name, or 'local' for the owner)")
    parser.add_argument("--since", help="from this UTC date, YYYY-MM-DD (default: today)")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument("--data-dir", type=Path, help="the data dir serve uses (default ~/.local/share/llama-direct)")
    parser.add_argument("--redis-url-file", type=Path, help="the fleet's Redis URL in a file (or "
                        "LLAMA_DIRECT_REDIS_URL): the ledger lives there, shared by every broker")
    return parser


def main(argv: list[str]) -> int:
    return on_store(_parser().parse_args(argv), _show)


def _since(text: str | None, today: int) -> int:
    if text is None:
        return today
    try:
        day = parse_day(text)
    except ValueError:
        raise UserError(f"--since takes a date as YYYY-MM-DD, not {text!r}") from None
    if day > today:
        raise UserError("--since is after today (UTC)")
    return max(day, today - MAX_USAGE_DAYS)


def _show(args: argparse.Namespace, store: UserStore, data_dir: Path) -> int:
    now = time.time()
    names = {listed.user.id: listed.user for listed in store.users()}
    user_id: str | None = None
    if args.user is not None:
        name = normalise_name(args.user)
        found = next((user for user in names.values() if user.name == name), None)
        if found is None and name != OWNER:
            raise UserError(f"no user named {name!r}")
        user_id = found.id if found is not None else OWNER
    rows = store.ledger(_since(args.since, day_of(now)), user_id)
    if args.json:
        for row in rows:
            print(json.dumps(_row(row, names[row.user].name if row.user in names else None)))
        return 0
    if not rows:
        print("llama-direct: no usage recorded in that time", file=sys.stderr, flush=True)
    else:
        _table(rows, {user_id: user.name for user_id, user in names.items()})
    if user_id is not None and user_id in names:
        limits = names[user_id].limits
        budget = Budget(limits.tokens_per_day, limits.tokens_per_minute)
        if budget.bounded:
            left = remaining(budget, *store.budget_windows(user_id, now))
            print(f"today: {left.day_used} generated or reserved; left: "
                  f"{'no limit' if left.day_left is None else left.day_left} today, "
                  f"{'no limit' if left.minute_left is None else left.minute_left} this minute")
    return 0


def _row(row: LedgerRow, name: str | None) -> dict[str, object]:
    return {"day": day_name(row.day), "user": name if name is not None else row.user, "user_id": row.user,
            "model": row.model, "route": row.route, "lane": row.lane, "requests": row.requests,
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens, "unseen": row.unseen}


def _table(rows: list[LedgerRow], names: dict[str, str]) -> None:
    print(f"{'DAY':<10} {'USER':<20} {'MODEL':<24} {'ROUTE':<10} {'LANE':<8} {'REQUESTS':>8} {'PROMPT':>10} "
          f"{'COMPLETION':>10} {'UNSEEN':>6}")
    for row in rows:
        print(f"{day_name(row.day):<10} {names.get(row.user, row.user):<20} {row.model:<24} {row.route:<10} "
              f"{row.lane:<8} {row.requests:>8} {row.prompt_tokens:>10} {row.completion_tokens:>10} {row.unseen:>6}")


def deployment_has_budgets(data_dir: Path, redis_url: str | None) -> bool:
    """Whether any user of this deployment has a token budget (which only the gate can settle): read
    without making a users file where there is none."""
    if redis_url is None and not (data_dir / USERS_DB_FILE).exists():
        return False
    store = open_store(data_dir, redis_url)
    try:
        return any(Budget(listed.user.limits.tokens_per_day, listed.user.limits.tokens_per_minute).bounded
                   for listed in store.users())
    finally:
        store.close()
