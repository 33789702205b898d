"""Pulls one other broker's JWKS over TLS; `jwks_document` decides what each answer is worth.

Why this shape: another broker rotates its keys on its own schedule and publishes each next key
before it signs with it. The gate asks every `interval` seconds (30 by default: an idle gate makes
one conditional request, usually a 304, twice a minute), and at once when a token names a kid it
does not know (`KeySet.refresh_for_unknown_kid`, at most once a second for all sources together).

Bounded: one connection, `PULL_TIMEOUT` per network step and `PULL_DEADLINE` for the whole pull (a
server dripping bytes cannot hold it), no redirects, no compression, at most `MAX_JWKS_BYTES` read.
TLS is verified against the system's trust store, or only the `--jwks-ca-file` CA when given.

A failed pull keeps the keys the gate had (an unreachable broker must not stop its live tokens
from verifying); a successful one replaces them, so a key the broker stopped publishing is gone at
the next pull. Logs name the host and the issuer, never the URL's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable

import httpx

from llama_direct.keys import PublicKeySet
from llama_launcher.gate.jwks_document import (
    MAX_JWKS_BYTES,
    NOT_MODIFIED,
    JwksError,
    JwksSource,
    check_head,
    conditional_headers,
    read_answer,
)
from llama_launcher.gate.single_flight import SingleFlight

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 30.0
PULL_TIMEOUT = 5.0
PULL_DEADLINE = 10.0


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trust store, or only `ca_file`'s CAs (a private CA); TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class RemoteJwks:
    """One `--issuer-jwks` source: its keys (bound to its issuer), validator and freshness."""

    def __init__(self, source: JwksSource, context: ssl.SSLContext, *, interval: float = DEFAULT_INTERVAL) -> None:
        self.source = source
        self.interval = interval
        self.keys = PublicKeySet({}, frozenset({source.issuer}))
        self.etag: str | None = None
        self.checked_at: float | None = None
        """`time.monotonic()` of the last answer that confirmed or replaced the keys."""
        self._client = httpx.AsyncClient(
            verify=context, timeout=PULL_TIMEOUT, follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=1, keepalive_expiry=interval + PULL_TIMEOUT),
        )
        self._pulling: SingleFlight[bool] = SingleFlight()
        self._failure: str | None = None
        self._skipped: tuple[str, ...] = ()

    async def pull(self) -> bool:
        """Pull now (joining a pull already under way); True when the keys are current."""
        return await self._pulling.join(self._pull)

    async def run(self, stop: asyncio.Event, pulled: Callable[[], None]) -> None:
        """Every `interval` until `stop`; `pulled` is called after each good pull."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
                return
            if await self.pull():
                pulled()

    def freshness(self, now: float) -> dict[str, object]:
        """For `/health`: the host (never the path), how many keys, and how old they are."""
        age = None if self.checked_at is None else round(now - self.checked_at, 1)
        return {"issuer": self.source.issuer, "host": self.source.host, "keys": len(self.keys.keys),
                "age_s": age, "ok": self._failure is None and self.checked_at is not None}

    async def aclose(self) -> None:
        await self._pulling.cancel()  # its connection closed before the client
        await self._client.aclose()

    async def _pull(self) -> bool:
        try:
            async with asyncio.timeout(PULL_DEADLINE):
                return await self._request()
        except JwksError as error:
            return self._failed(str(error))
        except TimeoutError:
            return self._failed(f"no complete answer within {PULL_DEADLINE:g} s")
        except httpx.HTTPError as error:
            return self._failed(_network_reason(error))

    async def _request(self) -> bool:
        headers = conditional_headers(self.etag)
        async with self._client.stream("GET", self.source.url, headers=headers) as answer:
            head = {name.lower(): value for name, value in answer.headers.items()}
            if check_head(answer.status_code, head, self.etag) == NOT_MODIFIED:
                return self._ok()
            body = bytearray()
            async for chunk in answer.aiter_raw():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError(f"the answer is larger than {MAX_JWKS_BYTES} bytes")
        fresh = read_answer(bytes(body), head, self.source.issuer)
        if fresh.skipped != self._skipped:
            for reason in fresh.skipped:
                log.warning("jwks issuer=%s host=%s skipped %s", self.source.issuer, self.source.host, reason)
        self._skipped = fresh.skipped
        if list(fresh.keys.keys) != list(self.keys.keys):
            log.info("jwks issuer=%s host=%s keys=%d", self.source.issuer, self.source.host, len(fresh.keys.keys))
        self.keys, self.etag = fresh.keys, fresh.etag
        return self._ok()

    def _ok(self) -> bool:
        if self._failure is not None:
            log.info("jwks issuer=%s host=%s pulling again", self.source.issuer, self.source.host)
        self._failure = None
        self.checked_at = time.monotonic()
        return True

    def _failed(self, reason: str) -> bool:
        if reason != self._failure:
            log.warning("jwks issuer=%s host=%s cannot pull: %s; keeping the last %d keys",
                        self.source.issuer, self.source.host, reason, len(self.keys.keys))
        self._failure = reason
        return False


def _network_reason(error: httpx.HTTPError) -> str:
    """A fixed phrase for a network failure: httpx's own messages may quote the URL."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "its TLS certificate is not trusted (see --jwks-ca-file)"
        if isinstance(cause, ssl.SSLError):
            return "the TLS handshake failed"
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.ConnectError):
        return "cannot connect"
    return f"the exchange failed ({type(error).__name__})"
