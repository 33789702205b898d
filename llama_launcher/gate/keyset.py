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

Other brokers' keys (`--issuer-jwks`, `jwks_pull.RemoteJwks`) are pulled beside, each source every
`jwks_interval` seconds and with the broker on an unknown kid. `trusted` joins them all for the
token check, each key bound to the issuers it may sign for (`keys.TrustedKeys`): a pulled key to its
source's issuer, the broker's own keys to every accepted issuer that has no source of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import httpx

from llama_direct.control import HOLD_SECONDS, KNOWN_PARAMETER, STATE_PATH
from llama_direct.keys import PublicKeySet, TrustedKeys
from llama_direct.replay import Revocations
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.jwks_document import JwksSource, own_issuers
from llama_launcher.gate.jwks_pull import RemoteJwks, tls_context
from llama_launcher.gate.single_flight import SingleFlight

log = logging.getLogger(__name__)

UNKNOWN_KID_MIN_INTERVAL = 1.0
PULL_TIMEOUT = 2.0
SOURCE_WAIT = 2.0
STARTING_GRACE = 15.0
"""Seconds a gate that has never had keys waits quietly for its broker (starting beside it) before it warns."""


class KeySet:
    def __init__(
        self, control_socket: str, *, interval: float = 0.5, sources: Sequence[RemoteJwks] = (),
        own: frozenset[str] | None = None,
    ) -> None:
        """`sources`: other brokers' JWKS; `own`: the issuers the broker's keys may sign for (None: any)."""
        self.keys = PublicKeySet({})
        self.sources = tuple(sources)
        self._own = own
        self._joined: tuple[PublicKeySet, ...] = ()
        self.trusted = TrustedKeys(())
        self.revocations = Revocations()
        self.version = ""
        self.interval = interval
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=control_socket),
            base_url="http://broker",
            timeout=PULL_TIMEOUT,
        )
        self._pulling: SingleFlight[bool] = SingleFlight()
        self._last_forced = -UNKNOWN_KID_MIN_INTERVAL
        self._failing = False
        self._waiting_since: float | None = None
        """When a gate without keys first failed to pull them; None once it has warned or has keys."""

    @classmethod
    def for_config(cls, config: GateConfig) -> KeySet:
        """The broker's control socket, and a puller per `--issuer-jwks` sharing one TLS context."""
        sources = [JwksSource(issuer, url) for issuer, url in config.issuer_jwks]
        remote: list[RemoteJwks] = []
        if sources:
            context = tls_context(config.jwks_ca_file)
            remote = [RemoteJwks(source, context, interval=config.jwks_interval) for source in sources]
        return cls(config.control_socket, interval=config.keyset_interval, sources=remote,
                   own=own_issuers(config.issuer, sources))

    async def refresh(self) -> bool:
        """Pull the broker's state and every source now (joining pulls under way); True when the
        broker's state was read.

        A source is waited for `SOURCE_WAIT` seconds at most, so that a slow or unreachable server
        holds neither the gate's start nor a token with an unknown kid for its whole deadline; its
        pull goes on, and its keys join `trusted` when it ends.
        """
        pulls = [asyncio.ensure_future(source.pull()) for source in self.sources]
        for pull in pulls:
            pull.add_done_callback(lambda _: self._join())
        read = await self._pulling.join(lambda: self._pull(known=""))
        if pulls:
            await asyncio.wait(pulls, timeout=SOURCE_WAIT)
        self._join()
        return read

    async def refresh_for_unknown_kid(self) -> bool:
        """One extra pull for a token whose kid is unknown; False when rate-limited or failed."""
        now = time.monotonic()
        if now - self._last_forced < UNKNOWN_KID_MIN_INTERVAL:
            return False
        self._last_forced = now
        return await self.refresh()

    async def run(self, stop: asyncio.Event) -> None:
        """Long-poll the broker and follow each source until `stop` is set."""
        followers = [asyncio.ensure_future(source.run(stop, self._join)) for source in self.sources]
        try:
            await self._long_poll(stop)
        finally:
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)

    async def _long_poll(self, stop: asyncio.Event) -> None:
        """After a failure, wait `interval` before the next try."""
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
        await self._pulling.cancel()  # its connection closed before the client
        await self._client.aclose()
        for source in self.sources:
            await source.aclose()

    def freshness(self) -> list[dict[str, object]]:
        """Each source's host, key count and age, for the gate's private `/health`."""
        now = time.monotonic()
        return [source.freshness(now) for source in self.sources]

    def _join(self) -> None:
        """Rebuild `trusted` when a pull changed any of the sets it joins."""
        sets = (self.keys.bound_to(self._own), *(source.keys for source in self.sources))
        if len(sets) != len(self._joined) or any(
            new.keys is not old.keys for new, old in zip(sets, self._joined, strict=True)
        ):
            self.trusted = TrustedKeys(sets)
        self._joined = sets

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
            self._failed()
            return False
        self.keys, self.revocations, self.version = keys, revocations, version
        self._join()
        return self._ok()

    def _failed(self) -> None:
        """Warn once per outage; a gate that never had keys first waits `STARTING_GRACE` quietly, since
        at every start it asks before the broker beside it listens."""
        now = time.monotonic()
        if self.version:
            if not self._failing:
                log.warning("cannot pull keys or revocations from the broker; keeping the last ones")
        elif self._waiting_since is None and not self._failing:
            self._waiting_since = now
            log.info("the broker's keys are not there yet; asking again")
        elif self._waiting_since is not None and now - self._waiting_since >= STARTING_GRACE:
            self._waiting_since = None
            log.warning("cannot pull keys from the broker: none yet after %.0f s", STARTING_GRACE)
        self._failing = True

    def _ok(self) -> bool:
        if self._failing:
            log.info("pulling keys and revocations from the broker again")
        self._failing = False
        return True
