"""Users named by an authenticating proxy (oauth2-proxy, Authelia, Tailscale Serve): the contract.

`serve --trusted-user-header NAME` believes the header `NAME` only on a connection whose TCP peer is
a `--trusted-proxy` address. The gate decides, per request, and never lets the decision reach the
broker as the proxy's own header: it drops `NAME` and `FORWARDED_USER_HEADER` from every request it
relays, then, for a trusted peer only, adds `FORWARDED_USER_HEADER` with the value(s) `NAME` had. The
broker, which only the gate reaches (its socket is in the runtime dir, 0700), believes that one
header and only when `serve` enabled header users in its settings, so a host app that mounts the
broker without a gate in front never takes a user from a header.

A header user is a named user (`llama_direct.users`) made on first sight with `--default-limits`,
without secrets (the proxy is their login): their grants carry their stable id as `sub`, never
`OWNER`, whatever name the proxy sends. At most `--max-header-users` are made this way; past that a
new name is refused (an existing one, or one made by `users add`, still works). Pure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from llama_direct.refusals import BAD_USER_HEADER, TOO_MANY_HEADER_USERS, RequestRefusal
from llama_direct.users import Limits, UserError, normalise_name

TRUSTED_USER_HEADER_FLAG = "--trusted-user-header"
DEFAULT_LIMITS_FLAG = "--default-limits"
MAX_HEADER_USERS_FLAG = "--max-header-users"
TRUSTED_PROXY_FLAG = "--trusted-proxy"

FORWARDED_USER_HEADER = "x-llama-direct-user"
"""What the gate sends the broker, lower-case: set by the gate alone, from a trusted proxy's header."""
DEFAULT_MAX_HEADER_USERS = 1000
"""Users a proxy's header may create; enough for a team, few enough that a proxy gone wrong (or a
header forwarded from the open internet by mistake) cannot fill the store."""
MAX_HEADER_USERS_LIMIT = 1_000_000

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")
_RESERVED = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
    "expect", "authorization", "cookie", "origin", "forwarded", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix", "x-real-ip", FORWARDED_USER_HEADER,
})
"""Headers that mean something else to the gate or the broker: never a user's name."""


def header_name(raw: str) -> str:
    """`--trusted-user-header`'s value, lower-case; a name HTTP cannot carry, or one the gate or the
    broker reads for something else, is refused."""
    name = raw.strip().lower()
    if not _TOKEN.fullmatch(name):
        raise UserError("a header name is 1 to 64 letters, digits and - (an HTTP token)")
    if name in _RESERVED:
        raise UserError(f"{name} cannot name users: llama-direct reads it for something else")
    return name


@dataclass(frozen=True)
class HeaderUsers:
    """What the broker knows of header users: none of it is a secret."""

    default_limits: Limits
    max_users: int = DEFAULT_MAX_HEADER_USERS

    def __post_init__(self) -> None:
        if isinstance(self.max_users, bool) or not isinstance(self.max_users, int) \
                or not 1 <= self.max_users <= MAX_HEADER_USERS_LIMIT:
            raise UserError(f"max header users must be a whole number from 1 to {MAX_HEADER_USERS_LIMIT}")


class LimitsDocument(TypedDict):
    """`Limits` as JSON: what `--default-limits` becomes in `broker.json` (None: no bound)."""

    models: list[str] | None
    tokens_per_day: int | None
    tokens_per_minute: int | None
    streams: int | None
    max_tokens: int | None


class HeaderUsersDocument(TypedDict):
    """`HeaderUsers` as `broker.json` holds it (`llama_direct.config_files.BrokerFlags.header_users`)."""

    default_limits: LimitsDocument
    max_users: int


def header_users_document(users: HeaderUsers) -> HeaderUsersDocument:
    limits = users.default_limits
    return {"default_limits": {"models": list(limits.models) if limits.models is not None else None,
                               "tokens_per_day": limits.tokens_per_day, "tokens_per_minute": limits.tokens_per_minute,
                               "streams": limits.streams, "max_tokens": limits.max_tokens},
            "max_users": users.max_users}


def header_users_from_document(document: HeaderUsersDocument) -> HeaderUsers:
    """The document back, each value checked by `Limits` and `HeaderUsers` (a `UserError` names which)."""
    limits = document["default_limits"]
    models = limits["models"]
    return HeaderUsers(Limits(models=tuple(models) if models is not None else None,
                              tokens_per_day=limits["tokens_per_day"], tokens_per_minute=limits["tokens_per_minute"],
                              streams=limits["streams"], max_tokens=limits["max_tokens"]),
                       max_users=document["max_users"])


def name_from_header(values: Sequence[str]) -> str:
    """The user the forwarded header names, normalised as `users add` does; a value that names nobody
    is refused (403 `bad_user_header`), never passed on as anonymous. The values are as the broker's
    framework read them (latin-1), so their bytes are read again as UTF-8."""
    if len(values) != 1:
        raise RequestRefusal(BAD_USER_HEADER, "several")
    try:
        text = values[0].encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise RequestRefusal(BAD_USER_HEADER, "encoding") from None
    try:
        return normalise_name(text)
    except UserError:
        raise RequestRefusal(BAD_USER_HEADER) from None


def check_room(header_users_now: int, limits: HeaderUsers) -> None:
    """Refuse one more user from a header once `max_users` were made (403 `too_many_header_users`)."""
    if header_users_now >= limits.max_users:
        raise RequestRefusal(TOO_MANY_HEADER_USERS, limit=limits.max_users)


def loopback_proxies(trusted: Sequence[str]) -> tuple[str, ...]:
    """The trusted proxies on this machine: with header users, any local account that can connect from
    one of them can claim any user, so serve warns (it never trusts loopback unless it is named)."""
    found = []
    for address in trusted:
        parsed = ipaddress.ip_address(address)
        mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
        if parsed.is_loopback or (mapped is not None and mapped.is_loopback):
            found.append(address)
    return tuple(found)
