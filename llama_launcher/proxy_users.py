"""`serve --trusted-user-header` and its companions, checked before anything starts: the gate's header
and the broker's header users, or neither (`llama_direct.header_users` says what each side does).

The header is believed only from a `--trusted-proxy` socket, so the flag without one is refused
rather than believed from nobody (or, worse, read as "any peer"). A trusted proxy on this machine is
allowed, since it was named, but warned about: any local account that can connect from that address
can then claim any user.
"""

from __future__ import annotations

import argparse
import sys

from llama_direct.header_users import (
    DEFAULT_LIMITS_FLAG,
    DEFAULT_MAX_HEADER_USERS,
    MAX_HEADER_USERS_FLAG,
    TRUSTED_PROXY_FLAG,
    TRUSTED_USER_HEADER_FLAG,
    HeaderUsers,
    HeaderUsersDocument,
    header_users_document,
    loopback_proxies,
)
from llama_direct.users import Limits
from llama_launcher.errors import LauncherError


def proxy_user_settings(args: argparse.Namespace) -> tuple[str | None, HeaderUsersDocument | None]:
    """(the header for `gate.json`, the header users for `broker.json`), or (None, None) without the flag."""
    header: str | None = args.trusted_user_header
    if header is None:
        if args.default_limits is not None or args.max_header_users is not None:
            raise LauncherError(f"{DEFAULT_LIMITS_FLAG} and {MAX_HEADER_USERS_FLAG} need {TRUSTED_USER_HEADER_FLAG}")
        return None, None
    if not args.trusted_proxy:
        raise LauncherError(f"{TRUSTED_USER_HEADER_FLAG} needs {TRUSTED_PROXY_FLAG} ADDR: the header is believed "
                            "only from that proxy's address")
    for address in loopback_proxies(args.trusted_proxy):
        print(f"llama-direct: warning: {TRUSTED_PROXY_FLAG} {address} is on this machine: with "
              f"{TRUSTED_USER_HEADER_FLAG}, any local account that can connect from it can claim any user",
              file=sys.stderr, flush=True)
    users = HeaderUsers(default_limits=args.default_limits or Limits(),
                        max_users=args.max_header_users or DEFAULT_MAX_HEADER_USERS)
    return header, header_users_document(users)
