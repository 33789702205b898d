"""The server's side of a negotiation, fixed at startup: the models, the cap, the TTL and the lane's URL.

Pure. Built once from the settings (`Policy.from_settings`); the lane's base is built from the
request's own scheme and host, checked here so that a `Host` header cannot smuggle anything into it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llama_direct.lanes import CHAT_PATH, LANE_PREFIX, LaneRoute
from llama_direct.refusals import BAD_HOST, RequestRefusal

if TYPE_CHECKING:
    from broker.settings import BrokerSettings

FALLBACK_PATH = CHAT_PATH
_HOST = re.compile(r"(?:[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


@dataclass(frozen=True)
class Policy:
    """The server's side of a negotiation, fixed at startup."""

    model: str
    max_tokens_cap: int
    ttl: int
    public_base: str | None = None
    public_prefix: str = ""
    gate_port: int | None = None
    models: tuple[str, ...] = ()
    system_prompts: Mapping[str, str] = field(default_factory=dict)
    """The operator's pinned system prompt of each model (`--system-prompt`)."""
    streams: int | None = None
    """The user's own stream limit (`users add --streams`), which grants carry to the gate; None: the
    gate's `--streams-per-user`. Never set from the settings: `broker.accounts.policy_for` sets it."""

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> Policy:
        return cls(
            model=settings.model,
            models=settings.models,
            max_tokens_cap=settings.max_tokens_cap,
            ttl=settings.token_ttl,
            public_base=settings.public_base,
            public_prefix=settings.public_prefix,
            gate_port=settings.gate_port,
            system_prompts=settings.system_prompts,
        )

    def fallback_for(self, route: LaneRoute) -> str:
        """Where a request for `route` goes off the lane: the broker's own copy of a route that takes a
        body; a resume or cancel has none, and names the chat's (the client re-sends the chat there)."""
        return self.public_prefix + (route.path if route.body is not None else FALLBACK_PATH)

    def lane_url(self, scheme: str, host: str) -> str:
        """The lane's base as the browser reaches it: `--public-url` wins, then the request's own host."""
        if self.public_base is not None:
            return self.public_base + LANE_PREFIX
        if self.gate_port is not None:
            return f"{scheme}://{split_host(host)[0]}:{self.gate_port}{LANE_PREFIX}"
        return f"{scheme}://{checked_host(host)}{LANE_PREFIX}"

    def app_origin(self, scheme: str, host: str) -> str:
        """The page's own origin, which a cookie-carrying request's `Origin` may name."""
        if self.public_base is not None:
            parts = self.public_base.split("/", 3)
            return "/".join(parts[:3]).lower()
        return f"{scheme}://{checked_host(host)}".lower()


def checked_host(host: str) -> str:
    """`host[:port]` from the Host header, refused when it could smuggle anything into a URL."""
    if not host or len(host) > 260 or not _HOST.fullmatch(host):
        raise RequestRefusal(BAD_HOST)
    return host


def split_host(host: str) -> tuple[str, int | None]:
    host = checked_host(host)
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", int(rest[1:]) if rest else None
    name, _, port = host.partition(":")
    return name, int(port) if port else None
