"""The master key: llama-server's real API key, which only the gate process ever holds.

It is generated per launch, registered for redaction at birth, handed to llama-server through
its environment (never argv: /proc/PID/cmdline is world-readable), and read back only through
:meth:`MasterKey.authorization`, which the gate calls when it forwards a request.
"""

from __future__ import annotations

import secrets

from llama_direct.redaction import register_secret
from llama_direct.runtime import LLAMA_API_KEY_ENV, UPSTREAM_KEY_ENV, UPSTREAM_KEYS_ENV

KEY_BYTES = 32  # 256 bits


class MasterKey:
    """One generated key. ``repr`` and ``str`` never show it."""

    __slots__ = ("_header", "_value")

    def __init__(self, value: str) -> None:
        register_secret(value)
        self._value = value
        self._header = b"Bearer " + value.encode("ascii")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_urlsafe(KEY_BYTES))

    def authorization(self) -> bytes:
        """The header value the gate sets on each upstream request: one object for the key's life, so
        the gate tells a new key (a respawned llama-server) from the same one by identity."""
        return self._header

    def child_environment(self, inherited: dict[str, str]) -> dict[str, str]:
        """llama-server's environment: the key set, and nothing inherited that could override it."""
        env = {
            name: value
            for name, value in inherited.items()
            if not name.startswith("LLAMA_ARG_")
            and name not in (LLAMA_API_KEY_ENV, UPSTREAM_KEY_ENV, UPSTREAM_KEYS_ENV)
        }
        env["LLAMA_API_KEY"] = self._value
        return env

    def __repr__(self) -> str:
        return "MasterKey(<hidden>)"

    __str__ = __repr__
