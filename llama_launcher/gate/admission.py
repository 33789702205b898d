"""Who may hold a connection to the public port: the caps, and the client's address.

Anyone who can reach the public port can open connections without logging in, so they are capped
twice, and each cap answers 503 with `Retry-After` rather than stalling:

- in all (`max_connections`), lowered at start to what the descriptor limit allows: a held stream
  costs two descriptors (the client's and llama-server's or the broker's);
- per client address, counting only connections that are still sending a request head or body
  (`max_pending_per_address`). A connection whose answer is streaming costs the gate a relay, not
  a buffer, and is not counted: a load tester holding 1,000 streams from loopback is not capped.

The client's address is the socket's. `X-Forwarded-For` is believed only from a proxy named in
`trusted_proxies` (behind nginx every socket has the proxy's address): then the client is the
right-most address in it that is not itself a trusted proxy. The same proxies alone may name the
user in `--trusted-user-header` (`forwarded_user`). Refusals are logged, at most one line
every ten seconds with the count since, so a flood cannot flood the log.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable

from llama_direct.refusals import Overloaded, TooManyPending
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.http1 import Header

log = logging.getLogger(__name__)

DESCRIPTORS_KEPT = 64
"""Descriptors left for everything but client connections: listeners, logs, the key pulls."""
LOG_EVERY_SECONDS = 10.0


def connection_cap(configured: int, descriptors: int) -> int:
    """`configured`, or what `descriptors` allow at two per held connection if that is fewer."""
    return max(1, min(configured, (descriptors - DESCRIPTORS_KEPT) // 2))


def forwarded_client(peer: str, forwarded_for: list[bytes], trusted: frozenset[str]) -> str:
    """The client's address: `peer`, or for a trusted proxy the right-most untrusted X-Forwarded-For entry."""
    if peer not in trusted:
        return peer
    entries = [entry.strip() for value in forwarded_for for entry in value.decode("latin-1").split(",")]
    for entry in reversed(entries):
        try:
            address = str(ipaddress.ip_address(entry))
        except ValueError:
            return peer
        if address not in trusted:
            return address
    return peer


def forwarded_user(peer: str | None, trusted: frozenset[str], header: bytes | None,
                   headers: Iterable[Header]) -> list[bytes]:
    """What the broker is told of the user (`FORWARDED_USER_HEADER`'s values): the configured
    `--trusted-user-header`'s, when the socket's peer is a trusted proxy; nothing from anyone else,
    and nothing when no header is configured. The gate drops both names from what it relays itself."""
    if header is None or peer is None or peer not in trusted:
        return []
    return [value for name, value in headers if name.lower() == header]


class Admission:
    """The public listeners' connection caps and the per-address count of requests still arriving."""

    def __init__(self, config: GateConfig, descriptors: int) -> None:
        self.max_connections = connection_cap(config.max_connections, descriptors)
        if self.max_connections < config.max_connections:
            log.warning(
                "max_connections lowered from %d to %d: the descriptor limit is %d",
                config.max_connections, self.max_connections, descriptors,
            )
        self.max_pending = config.max_pending_per_address
        self.trusted = frozenset(config.trusted_proxies)
        self.user_header = config.trusted_user_header.encode("ascii") if config.trusted_user_header else None
        """`--trusted-user-header`, lower-case: believed from `trusted` alone (`forwarded_user`)."""
        self.pending: dict[str, int] = {}
        self._refused = 0
        self._logged_at = float("-inf")

    def admit(self, open_connections: int, peer: str) -> Overloaded | None:
        """The refusal for a new public connection from `peer`, or None when it may stay."""
        if open_connections >= self.max_connections:
            return self._refuse(Overloaded())
        if peer not in self.trusted and self.pending.get(peer, 0) >= self.max_pending:
            return self._refuse(TooManyPending())
        return None

    def over(self, address: str) -> TooManyPending | None:
        """For a request relayed by a trusted proxy: whether its client already has too many arriving."""
        if self.pending.get(address, 0) >= self.max_pending:
            refusal = TooManyPending()
            self._refuse(refusal)
            return refusal
        return None

    def enter(self, address: str) -> None:
        self.pending[address] = self.pending.get(address, 0) + 1

    def leave(self, address: str) -> None:
        left = self.pending[address] - 1
        if left:
            self.pending[address] = left
        else:
            del self.pending[address]

    def _refuse(self, refusal: Overloaded) -> Overloaded:
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            log.warning(
                "refused %d connection(s) with 503 (latest: %s) since the last such line; caps: %d in all, "
                "%d arriving per address", self._refused, refusal.code, self.max_connections, self.max_pending,
            )
            self._refused = 0
            self._logged_at = now
        return refusal
