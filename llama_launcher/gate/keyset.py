"""The gate's copies of the broker's public keys and revocations, long-polled on its control socket.

The gate holds one `GET /state?known=<version>` open (`llama_direct.control`): the broker answers
it as soon as a key is staged, promoted or retired or a user is revoked, and otherwise after
`HOLD_SECONDS` with a 304. A revocation so bites within milliseconds, while an idle gate makes one
small exchange every ten seconds instead of two full pulls a second. The broker publishes a new
key before it signs with it; a token naming a kid the gate has not seen yet still triggers one
immediate pull, at most once a second, so a burst of forged kids cannot turn the gate into a load
generator against the broker.

A failed pull keeps what the gate had: an unreachable broker must not empty the key set (which
would refuse every stream) nor clear the revocations (which would revive revoked tokens); the
long poll is retried every `interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx

from llama_direct.control import HOLD_SECONDS, KNOWN_PARAMETER, STATE_PATH
from llama_direct.keys import PublicKeySet
from llama_direct.replay import Revocations

log = logging.getLogger(__name__)

UNKNOWN_KID_MIN_INTERVAL = 1.0
PULL_TIMEOUT = 2.0


class KeySet:
    def __init__(self, control_socket: str, *, interval: float = 0.5) -> None:
        self.keys = PublicKeySet({})
        self.revocations = Revocations()
        self.version = ""
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
        """Pull the state now (joining an immediate pull already under way); True when it was read."""
        if self._pulling is None or self._pulling.done():
            self._pulling = asyncio.ensure_future(self._pull(known=""))
        return await asyncio.shield(self._pulling)

    async def refresh_for_unknown_kid(self) -> bool:
        """One extra pull for a token whose kid is unknown; False when rate-limited or failed."""
        now = time.monotonic()
        if now - self._last_forced < UNKNOWN_KID_MIN_INTERVAL:
            return False
        self._last_forced = now
        return await self.refresh()

    async def run(self, stop: asyncio.Event) -> None:
        """Long-poll until `stop` is set; after a failure, wait `interval` before the next try."""
        while not stop.is_set():
            poll = asyncio.ensure_future(self._pull(known=self.version))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait((poll, stopped), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
                return
            if not poll.result():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

    async def aclose(self) -> None:
        if self._pulling is not None and not self._pulling.done():
            self._pulling.cancel()
        await self._client.aclose()

    async def _pull(self, *, known: str) -> bool:
        """One `GET /state`: held by the broker while `known` is current; True when the state is current."""
        timeout = PULL_TIMEOUT + (HOLD_SECONDS if known else 0.0)
        try:
            answer = await self._client.get(STATE_PATH, params={KNOWN_PARAMETER: known}, timeout=timeout)
            if answer.status_code == 304 and known:
                return self._ok()
            answer.raise_for_status()
            document = answer.json()
            keys = PublicKeySet.from_jwks(document["jwks"])
            revocations = Revocations.from_dict(document["revocations"])
            version = document["version"]
            if not isinstance(version, str):
                raise ValueError("the version must be a string")
        except (httpx.HTTPError, ValueError, TypeError, KeyError):
            if not self._failing:
                log.warning("cannot pull keys or revocations from the broker; keeping the last ones")
            self._failing = True
            return False
        self.keys, self.revocations, self.version = keys, revocations, version
        return self._ok()

    def _ok(self) -> bool:
        if self._failing:
            log.info("pulling keys and revocations from the broker again")
        self._failing = False
        return True
