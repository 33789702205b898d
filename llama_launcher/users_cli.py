"""`llama-direct users`: add, list, set, remove and rotate named users, while serve runs or not.

The store is the data dir's SQLite file, or the fleet's Redis when a URL is configured
(`--redis-url-file` or `LLAMA_DIRECT_REDIS_URL`, as for `serve`): `llama_direct.user_store`.
`add` and `rotate` print the user's two secrets once (a login link and an API key), on stdout;
everything else goes to stderr. After `remove` or `rotate` in the data dir, the running serve is
told (`USERS_CHANGED_PATH` on its control socket, found through the runtime line of its log), so it
refuses the user's grants on the gate at once; the broker refuses the old secrets and sessions
from the store itself, told or not. With Redis, the store announces the revocation to every broker.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from llama_direct.control import USERS_CHANGED_PATH
from llama_direct.header_users import DEFAULT_LIMITS_FLAG
from llama_direct.refusals import SharedStateUnavailable
from llama_direct.runtime import CONTROL_SOCKET, last_runtime_line, read_serve_log
from llama_direct.user_store import UserStore, open_store
from llama_direct.users import (
    API_KEY,
    LIMIT_FIELDS,
    LOGIN,
    Limits,
    Listed,
    NewSecrets,
    UserError,
    new_secrets,
    new_user,
    normalise_name,
    parse_models,
    with_limits,
)
from llama_launcher import secret_inputs
from llama_launcher.errors import LauncherError
from llama_launcher.paths import default_data_dir

NOTIFY_TIMEOUT = 10.0
"""How long the running broker may take to apply a change (it reads the store and wakes its gate)."""
_CLEAR = "none"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama-direct users", description="Named users, each with a login link, "
                                     "an API key and limits; the owner's access token is untouched.")
    commands = parser.add_subparsers(dest="action", required=True)
    add = commands.add_parser("add", help="a new user: prints a login link and an API key, once")
    add.add_argument("name")
    add.add_argument("--url", help="the base of the login link (default: the address serve last printed)")
    _limit_options(add, clearable=False)
    listing = commands.add_parser("list", help="every user and their limits, with fingerprints, never a secret")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    change = commands.add_parser("set", help="change a user's limits ('none' clears one; --all-models clears models)")
    change.add_argument("name")
    _limit_options(change, clearable=True)
    change.add_argument("--all-models", action="store_true", help="no models limit")
    remove = commands.add_parser("remove", help="remove a user: their secrets, sessions and grants stop at once")
    remove.add_argument("name")
    rotate = commands.add_parser("rotate", help="new secrets for a user; the old ones, their sessions and grants stop")
    rotate.add_argument("name")
    rotate.add_argument("--url", help="the base of the login link (default: the address serve last printed)")
    for command in (add, listing, change, remove, rotate):
        command.add_argument("--data-dir", type=Path,
                             help="the data dir serve uses (default ~/.local/share/llama-direct)")
        command.add_argument("--redis-url-file", type=Path, help="the fleet's Redis URL in a file (or "
                             "LLAMA_DIRECT_REDIS_URL): users live there, shared by every broker")
    return parser


def _limit_options(parser: argparse.ArgumentParser, *, clearable: bool) -> None:
    """The limit flags; for `set` each is absent unless given, and `none` clears it."""
    number = _bound(clearable)
    default = argparse.SUPPRESS if clearable else None
    parser.add_argument("--models", type=parse_models, default=default, metavar="A,B",
                        help="the only models this user may use")
    for flag, what in (("tokens-per-day", "generated tokens per UTC day"),
                       ("tokens-per-minute", "generated tokens per minute"),
                       ("streams", "streams at once"), ("max-tokens", "the largest max_tokens of one request")):
        parser.add_argument(f"--{flag}", type=number, default=default, metavar="N", help=what)


def parse_limits(text: str) -> Limits:
    """`serve --default-limits "--models A,B --max-tokens 512"`: `users add`'s limit flags in one string,
    read by the same options, so the two can never drift apart."""
    parser = argparse.ArgumentParser(prog=DEFAULT_LIMITS_FLAG, add_help=False, exit_on_error=False)
    _limit_options(parser, clearable=False)
    try:
        args, extra = parser.parse_known_args(shlex.split(text))
    except (argparse.ArgumentError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{DEFAULT_LIMITS_FLAG}: {error}") from None
    if extra:
        raise argparse.ArgumentTypeError(f"{DEFAULT_LIMITS_FLAG} takes --models, --tokens-per-day, "
                                         f"--tokens-per-minute, --streams and --max-tokens, not {extra[0]!r}")
    try:
        return Limits(**{field: getattr(args, field) for field in LIMIT_FIELDS})
    except UserError as error:
        raise argparse.ArgumentTypeError(f"{DEFAULT_LIMITS_FLAG}: {error}") from None


def _bound(clearable: bool) -> Callable[[str], int | None]:
    def parse(text: str) -> int | None:
        if clearable and text.strip().lower() == _CLEAR:
            return None
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number{' or none' if clearable else ''}") from None

    return parse


Action = Callable[[argparse.Namespace, UserStore, Path], int]


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    actions: dict[str, Action] = {"add": _add, "list": _list, "set": _set, "remove": _remove, "rotate": _rotate}
    return on_store(args, actions[args.action], unreachable="; nothing was changed")


def on_store(args: argparse.Namespace, action: Action, *, unreachable: str = "") -> int:
    """`action` on the store that `--data-dir` and `--redis-url-file` name (as `serve` finds it), its
    refusals said in one line with exit status 2 (`llama-direct usage` runs on it too)."""
    try:
        data_dir = (args.data_dir or default_data_dir()).resolve()
        store = open_store(data_dir, secret_inputs.redis_url(args.redis_url_file))
        try:
            return action(args, store, data_dir)
        finally:
            store.close()
    except (LauncherError, UserError) as error:
        print(f"llama-direct: error: {error}", file=sys.stderr, flush=True)
        return 2
    except SharedStateUnavailable:
        print(f"llama-direct: error: the fleet's Redis cannot be reached{unreachable}", file=sys.stderr, flush=True)
        return 2


def _add(args: argparse.Namespace, store: UserStore, data_dir: Path) -> int:
    limits = Limits(**{field: getattr(args, field) for field in LIMIT_FIELDS})
    user = new_user(args.name, limits, time.time())
    made = new_secrets()
    store.add(user, made.records())
    _say(f"user {user.name} added (id {user.id}); its login link and API key are shown once, here:")
    _print_secrets(made, _link_base(args.url, data_dir))
    return 0


def _rotate(args: argparse.Namespace, store: UserStore, data_dir: Path) -> int:
    made = new_secrets()
    user = store.rotate(normalise_name(args.name), made.records(), _not_before())
    _say(f"user {user.name}: new secrets; the old ones, and every session and grant made with them, are refused")
    _print_secrets(made, _link_base(args.url, data_dir))
    _tell_serve(data_dir, store)
    return 0


def _remove(args: argparse.Namespace, store: UserStore, data_dir: Path) -> int:
    user = store.remove(normalise_name(args.name), _not_before())
    _say(f"user {user.name} removed; their secrets, sessions and grants are refused")
    _tell_serve(data_dir, store)
    return 0


def _set(args: argparse.Namespace, store: UserStore, data_dir: Path) -> int:
    name = normalise_name(args.name)
    changes: dict[str, object] = {field: getattr(args, field) for field in LIMIT_FIELDS if hasattr(args, field)}
    if args.all_models:
        if "models" in changes:
            raise UserError("--models and --all-models contradict each other")
        changes["models"] = None
    if not changes:
        raise UserError("say which limit to set (llama-direct users set --help)")
    current = store.user(name)
    if current is None:
        raise UserError(f"no user named {name!r}")
    user = store.set_limits(name, with_limits(current.limits, changes))
    _say(f"user {user.name}: {_limits_text(user.limits)}")
    return 0


def _list(args: argparse.Namespace, store: UserStore, data_dir: Path) -> int:
    listed = store.users()
    if args.json:
        for entry in listed:
            print(json.dumps(_row(entry)))
        return 0
    if not listed:
        _say("no users yet (llama-direct users add NAME); the owner's access token needs none")
        return 0
    print(f"{'NAME':<20} {'ID':<18} {'LOGIN':<8} {'API KEY':<8} LIMITS")
    for entry in listed:
        prints = entry.fingerprints
        print(f"{entry.user.name:<20} {entry.user.id:<18} {prints.get(LOGIN, '-'):<8} {prints.get(API_KEY, '-'):<8} "
              f"{_limits_text(entry.user.limits)}")
    return 0


def _row(entry: Listed) -> dict[str, Any]:
    user, limits = entry.user, entry.user.limits
    return {"name": user.name, "id": user.id, "created": user.created,
            "login_fingerprint": entry.fingerprints.get(LOGIN), "api_key_fingerprint": entry.fingerprints.get(API_KEY),
            "models": list(limits.models) if limits.models is not None else None,
            "tokens_per_day": limits.tokens_per_day, "tokens_per_minute": limits.tokens_per_minute,
            "streams": limits.streams, "max_tokens": limits.max_tokens}


def _limits_text(limits: Limits) -> str:
    parts = [f"{field.replace('_', '-')}={value}" for field in LIMIT_FIELDS[1:]
             if (value := getattr(limits, field)) is not None]
    if limits.models is not None:
        parts.insert(0, "models=" + ",".join(limits.models))
    return " ".join(parts) or "no limits"


def _not_before() -> int:
    """Two seconds after now's: a grant minted up to now is refused, even one a broker minted at a later
    `iat`, its gate's start cut-off (the second after the gate started, at most the one after now's;
    `BrokerCore.mint_time`), which the command cannot read. A grant minted after it is born at this
    second, not refused (`mint_time` raises its `iat` to the user's revocation). A broker on the data
    dir also raises it past any later `iat` it minted (`BrokerCore._merge_user_revocations`); with Redis
    this margin is what covers the cut-off."""
    return math.floor(time.time()) + 2


def _link_base(url: str | None, data_dir: Path) -> str | None:
    """`--url`, else the address the running (or last) serve printed in its ready line."""
    if url:
        return url.rstrip("/")
    runtime = last_runtime_line(read_serve_log(data_dir))
    return runtime.url if runtime is not None else None


def _print_secrets(made: NewSecrets, base: str | None) -> None:
    if base is not None:
        print(f"login link: {base}/?token={made.login_token}")
    else:
        print(f"login token: {made.login_token}")
        _say("no serve address is known yet: the login link is serve's address followed by /?token= and this token "
             "(or pass --url)")
    print(f"API key: {made.api_key}", flush=True)


def _tell_serve(data_dir: Path, store: UserStore) -> None:
    """Ask the running broker to apply the store's revocations now (Redis announces them itself)."""
    if not store.revocations(time.time()):
        return
    runtime = last_runtime_line(read_serve_log(data_dir))
    socket_path = runtime.path / CONTROL_SOCKET if runtime is not None else None
    if socket_path is None or not socket_path.exists():
        _say("serve is not running here: it applies this when it starts")
        return
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=NOTIFY_TIMEOUT) as client:
            answer = client.post("http://broker" + USERS_CHANGED_PATH)
    except httpx.HTTPError:
        _say("serve is not running here: it applies this when it starts")
        return
    if answer.status_code != 204:
        raise LauncherError(f"serve did not apply the change (status {answer.status_code}); see its broker log")


def _say(text: str) -> None:
    print(f"llama-direct: {text}", file=sys.stderr, flush=True)
