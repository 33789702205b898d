"""Wake this broker's held `/state` polls when any broker revokes: Redis pub/sub, no polling.

With state shared in Redis, a logout at broker A must reach gate B within about a second. Broker B
used to re-read the revocations every 0.25 s while its gate's long poll was held, which cost an idle
broker 3.8 ms of CPU a second and redis-server 2.2 ms/s (issue 24 allows 1 ms/s to each process).
Now `RedisRevocations.revoke` publishes on `REVOCATIONS_CHANNEL` in the same script that records
the revocation, and each broker keeps one subscription whose read blocks until a message arrives
(no read timeout, no health-check ping), so an idle broker does not wake at all.

Pub/sub delivers at most once: what is published while the subscription is down is lost. So every
(re)subscription wakes the polls once (they re-read Redis), and while the subscription is down
`live` is False and the polls re-read on their own every `UNWATCHED_RECHECK_SECONDS`, as before.
Reconnects back off from `FIRST_BACKOFF_SECONDS` to `MAX_BACKOFF_SECONDS`; an outage is one WARNING,
its end one INFO line. TCP keepalive notices a Redis host that vanished without closing the
connection (about 25 s); until then the poll's own hold (`HOLD_SECONDS`) bounds the delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.shared_state import DEFAULT_TIMEOUT
from llama_direct.shared_replay import REVOCATIONS_CHANNEL

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger(__name__)

UNWATCHED_RECHECK_SECONDS = 0.25
"""While the subscription is down, a held poll re-reads the revocations this often, so a logout at
any broker still reaches every gate within a second."""
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
KEEPALIVE_OPTIONS = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
"""Probes sent by the kernel, which cost this process nothing: a dead peer is found in about 25 s."""


def _subscriber(url: str) -> redis.asyncio.Redis:
    """A client whose reads wait as long as it takes (a subscription is silent while nothing
    happens), with no retry of its own: `RevocationWatch` reconnects, with its back-off."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {}
    if not url.lower().startswith("unix:"):  # keepalive is a TCP option; a unix socket's peer is local
        options = {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE_OPTIONS}
    return redis.asyncio.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=DEFAULT_TIMEOUT,
                                        retry=Retry(NoBackoff(), 0), health_check_interval=0, **options)


class RevocationWatch:
    """One subscription to `REVOCATIONS_CHANNEL`; `on_change` runs for each message, and after
    each (re)subscription. Started by the first held poll (`start`), ended by `stop`."""

    def __init__(self, url: str, on_change: Callable[[], None]) -> None:
        self._url = url
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.live = False
        """Subscribed now: a revocation anywhere wakes the polls, which need not re-read Redis."""

    def start(self) -> None:
        """Subscribe in the background on the running loop; a no-op once started."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="revocation-watch")

    def stop(self) -> None:
        """Cancel the subscription; its connection closes as the task unwinds."""
        if self._task is not None:
            self._task.cancel()
        self.live = False

    async def _run(self) -> None:
        """Subscribe, listen until the connection fails, back off, again; never returns by itself."""
        from redis.exceptions import RedisError

        backoff, down = FIRST_BACKOFF_SECONDS, False
        while True:
            client = _subscriber(self._url)
            try:
                async with client.pubsub() as pubsub:
                    await asyncio.wait_for(pubsub.subscribe(REVOCATIONS_CHANNEL), DEFAULT_TIMEOUT)
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":  # Redis confirmed: from now on nothing is missed
                            self.live, backoff = True, FIRST_BACKOFF_SECONDS
                            if down:
                                logger.info("event=revocation_watch_up")
                                down = False
                        self._on_change()  # a revocation; or, once subscribed, whatever was missed before
            except (RedisError, OSError, TimeoutError) as error:
                if not down:
                    logger.warning("event=revocation_watch_down error=%s recheck_s=%g", type(error).__name__,
                                   UNWATCHED_RECHECK_SECONDS)
                    down = True
            finally:
                self.live = False
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
