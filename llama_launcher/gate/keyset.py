"""The gate's copies of the broker's public keys and revocations, pulled from its control socket.

The broker publishes a new key one pull before it signs with it, and records a revocation at once;
pulling both every `interval` (0.5 s) makes a revocation bite within a second. A token naming a kid
the gate has not seen yet triggers one extra pull, at most once a second, so a burst of forged kids
cannot turn the gate into a load generator against the broker.

A failed pull keeps what the gate had: an unreachable broker must not empty the key set (which
would refuse every stream) nor clear the revocations (which would revive revoked tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx

from llama_direct.keys import PublicKeySet
from llama_direct.replay import Revocations

log = logging.getLogger(__name__)

UNKNOWN_KID_MIN_INTERVAL = 1.0
PULL_TIMEOUT = 2.0


class KeySet:
    def __init__(self, control_socket: str, *, interval: float = 0.5) -> None:
        self.keys = PublicKeySet({})
        self.revocations = Revocations()
        self.interval = interval
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=control_socket),
            base_url="http://broker",
            timeout=PULL_TIMEOUT,
        )
        self._pulling: asyncio.Task[bool] | None = None
        self._last_forced = -UNKNOWN_KID_MIN_INTERVAL
        self._failing = False

    async def refresh(self) -> bool:
        """Pull both documents now (joining a pull already under way); True when both were read."""
        if self._pulling is None or self._pulling.done():
            self._pulling = asyncio.ensure_future(self._pull())
        return await asyncio.shield(self._pulling)

    async def refresh_for_unknown_kid(self) -> bool:
        """One extra pull for a token whose kid is unknown; False when rate-limited or failed."""
        now = time.monotonic()
        if now - self._last_forced < UNKNOWN_KID_MIN_INTERVAL:
            return False
        self._last_forced = now
        return await self.refresh()

    async def run(self, stop: asyncio.Event) -> None:
        """Pull every `interval` until `stop` is set."""
        while not stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def aclose(self) -> None:
        if self._pulling is not None and not self._pulling.done():
            self._pulling.cancel()
        await self._client.aclose()

    async def _pull(self) -> bool:
        try:
            jwks = await self._client.get("/jwks")
            revoked = await self._client.get("/revocations")
            jwks.raise_for_status()
            revoked.raise_for_status()
            keys = PublicKeySet.from_jwks(jwks.json())
            revocations = Revocations.from_dict(revoked.json())
        except (httpx.HTTPError, ValueError):
            if not self._failing:
                log.warning("cannot pull keys or revocations from the broker; keeping the last ones")
            self._failing = True
            return False
        self.keys, self.revocations = keys, revocations
        if self._failing:
            log.info("pulling keys and revocations from the broker again")
        self._failing = False
        return True
