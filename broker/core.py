"""The broker's state: settings, ids, keys, sessions, conversations and the gate link.

Sessions and rate counters live in memory, revocations in memory and the data dir's
`revocations.json` (`broker.revocation_file`); or all three in Redis when a URL is configured
(`broker.shared_state`), so that several brokers behind a balancer share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

import httpx

from broker.accounts import store_revocations
from broker.conversations import Conversations
from broker.fleet_models import FleetModels
from broker.gate_health import GateHealth
from broker.gate_link import GateLink
from broker.issuer import Issuer
from broker.models import ModelInfo, allowed_models, own_models, published
from broker.policy import Policy
from broker.revocation_file import load_revocations, save_revocations
from broker.revocation_watch import UNWATCHED_RECHECK_SECONDS, RevocationWatch
from broker.session_file import SavedSessions
from broker.sessions import (
    LOGIN_FAILURE_BURST,
    LOGIN_FAILURES_PER_MINUTE,
    AccessTokens,
    RateLimiter,
    SessionStore,
)
from broker.settings import BrokerSettings, SettingsError, direct_stream_enabled, normalise_origin
from broker.shared_state import (
    LOAD_RATE_PREFIX,
    RedisRateLimiter,
    RedisRevocations,
    RedisSessionStore,
    sync_client,
)
from broker.signing_keys import KeyFileError, KeyRing
from llama_direct.control import REVOKED_PATH, revocation
from llama_direct.ids import Ids, load_or_create_ids
from llama_direct.redaction import register_secret
from llama_direct.refusals import RateLimited
from llama_direct.replay import Revocations
from llama_direct.user_store import open_store

logger = logging.getLogger(__name__)

LANE_TELL_TIMEOUT_SECONDS = 2.0
LANE_REVOKED_URL = "http://lane" + REVOKED_PATH
"""On the lane's control socket (the host name is any: a unix socket)."""


def _keyring(settings: BrokerSettings, now: float) -> KeyRing:
    """The configured key file (its own algorithm wins), else the keys dir, made at first start."""
    if settings.signing_key_file is None:
        keyring = KeyRing(settings.data_dir / "keys", settings.algorithm)
        try:
            keyring.load_or_create(now)
        except KeyFileError as error:
            raise SettingsError(f"keys dir: {error}") from None
        return keyring
    try:
        return KeyRing.from_pem_file(settings.signing_key_file)
    except FileNotFoundError:
        raise SettingsError("signing_key_file does not exist") from None
    except PermissionError:
        raise SettingsError("signing_key_file cannot be read by the broker") from None
    except IsADirectoryError:
        raise SettingsError("signing_key_file is a directory") from None
    except KeyFileError as error:
        raise SettingsError(f"signing_key_file: {error}") from None


def _not_forwarded(user: str) -> None:
    logger.error("event=revocation_not_forwarded user=%s: the lane's gate accepts the user's tokens until they "
                 "expire", user)


class BrokerCore:
    """This process's state, shared by the public and the control app."""

    def __init__(
        self,
        settings: BrokerSettings,
        access_token: str | None,
        *,
        keyring: KeyRing | None = None,
        clock: Callable[[], float] = time.time,
        ids: Ids | None = None,
        gate_transport: httpx.AsyncBaseTransport | None = None,
        redis_url: str | None = None,
    ) -> None:
        # None: mounted in a host app (`broker.mount.mounted_core`), whose users are the host's: no
        # owner's token, and no session file of the broker's own login.
        if access_token is not None:
            register_secret(access_token)
        self.mounted = access_token is None
        self.settings = settings
        self.clock = clock
        self.access = AccessTokens.single(access_token) if access_token is not None else AccessTokens.none()
        self.sessions: SessionStore | RedisSessionStore
        self.limiter: RateLimiter | RedisRateLimiter
        self.load_limiter: RateLimiter | RedisRateLimiter
        self.revocations: Revocations | RedisRevocations
        self.watch = RevocationWatch(redis_url, self.published_changed) if redis_url else None
        """Revocations may change at another broker: its announcement wakes the `/state` polls held here."""
        self.fleet_models: FleetModels | None = None
        """The other brokers' models, for `GET /v1/models` behind an edge that routes by model."""
        if redis_url:
            client = sync_client(redis_url)
            self.sessions = RedisSessionStore(client)
            self.limiter = RedisRateLimiter(client, settings.rate_per_minute, settings.burst)
            self.revocations = RedisRevocations(client)
            self.load_limiter = RedisRateLimiter(
                client, settings.load_rate_per_minute, settings.load_rate_per_minute, prefix=LOAD_RATE_PREFIX)
        else:
            self.sessions = SavedSessions(settings.data_dir, clock()) if access_token is not None else SessionStore()
            self.limiter = RateLimiter(settings.rate_per_minute, settings.burst)
            self.revocations = load_revocations(settings.data_dir, clock())
            self.load_limiter = RateLimiter(settings.load_rate_per_minute, settings.load_rate_per_minute)
        """Model loads per user: a load stalls every user of the box for its duration. The gate charges
        each load here as it forwards the request that causes it (`POST /loads`, `charge_load`)."""
        self.users = open_store(settings.data_dir, redis_url)
        """Named users (`llama-direct users`): the data dir's SQLite file, or the fleet's Redis."""
        self.login_failures = RateLimiter(LOGIN_FAILURES_PER_MINUTE, LOGIN_FAILURE_BURST)
        """Wrong access tokens per client address, this broker's own count even with Redis."""
        self.policy = Policy.from_settings(settings)
        self.ids = ids or load_or_create_ids(settings.data_dir)
        if keyring is None:
            keyring = _keyring(settings, clock())
        self.keyring = keyring
        self.gate = GateLink(settings, gate_transport)
        self.gate.on_health = self._on_health
        self._merge_user_revocations()
        if redis_url:
            self.fleet_models = FleetModels(client, self.aud, self.iss)
        self.allowed_origins = frozenset(
            origin for origin in (normalise_origin(o) for o in settings.allowed_origins) if origin
        )
        self.conversations = Conversations()
        self._allowed: tuple[GateHealth | None, tuple[str, ...]] = (None, ())
        self._changed = asyncio.Event()
        self.stopping = False
        """Set when the broker stops: a long poll answers at once rather than wait out its hold."""
        logger.info(
            "event=broker_configured algorithm=%s direct_stream=%s model=%s",
            keyring.current.algorithm, direct_stream_enabled(), settings.model,
        )

    def _on_health(self, health: GateHealth) -> None:
        """Each answer polled from the gate: publish this broker's models."""
        now = self.clock()
        if self.fleet_models is not None:  # a gate that is down serves nothing: the others stop listing it
            self.fleet_models.publish(published(self.own_models(health)) if health.up else [], now)

    def allowed_models(self, health: GateHealth) -> tuple[str, ...]:
        """The models a user may use, the default first: computed once per health answer, which
        negotiation, the baseline and the model list each read (the configured ones, else what the
        gate lists, else the default)."""
        if self._allowed[0] is not health:
            self._allowed = (health, tuple(allowed_models(self.policy.models, self.policy.model, health.models)))
        return self._allowed[1]

    def own_models(self, health: GateHealth) -> list[ModelInfo]:
        """The models this broker grants, with their states at its gate (as its own listing says)."""
        return own_models(self.allowed_models(health), health.models, health.model_ready)

    def issuer(self) -> Issuer:
        """Minting is what moves the rotation schedule on: a successor is staged, then signs once published."""
        generation = self.keyring.generation
        key = self.keyring.advance(self.clock(), self.settings.key_max_age)
        if self.keyring.generation != generation:
            self.published_changed()
        return Issuer(key=key, issuer=self.iss, audience=self.aud)

    @property
    def iss(self) -> str:
        """`--issuer` (the first one: this broker's own) when given, else the broker id of the data dir."""
        return self.settings.issuer or self.ids.broker_id

    @property
    def aud(self) -> str:
        """`--audience` when given (several gates share it), else the gate id of the data dir."""
        return self.settings.audience or self.ids.gate_id

    def mint_time(self, user: str, now: float) -> float:
        """`now`, or a later whole second the gate requires, so a new token is not born refused: the
        user's revocation second, or the gate's start cut-off (the next second after it started).

        `iat` is a whole second and a revocation refuses every `iat` below its second, which is the
        one after the revocation; the gate's leeway (5 s) lets such a token start at once.
        """
        floors = [self.revocations.to_dict()["not_before"].get(user), self.gate.health.not_issued_before]
        return max([now, *(floor for floor in floors if floor is not None)])

    def charge_load(self, user: str, model: str, now: float) -> None:
        """The gate is about to forward `user`'s request that makes the router load `model`: one of
        the user's loads, or 429 past them, before the load starts. The gate charges each load once,
        whichever grant the request came with (`llama_launcher.gate.load_charges`)."""
        retry_after = self.load_limiter.acquire(user, now)
        if retry_after:
            logger.info("event=load_refused user=%s model=%s retry_after=%d", user, model, retry_after)
            raise RateLimited(retry_after)

    def revoke(self, user: str) -> int:
        """Refuse every token of `user` issued up to now; returns the second from which new ones count.

        Mounted beside a lane (`mounted_core`) without Redis, the gate polls the lane's own broker
        half, not this one: the revocation is handed to it on its control socket, at once. This waits
        for that answer (a unix socket: a millisecond or two, `LANE_TELL_TIMEOUT_SECONDS` at worst), so
        code on an event loop awaits `arevoke` instead.
        """
        not_before = self._revoke_here(user)
        if self._lane_to_tell(user):
            told = False
            with contextlib.suppress(httpx.HTTPError), httpx.Client(
                    transport=httpx.HTTPTransport(uds=str(self.settings.control_socket)),
                    timeout=LANE_TELL_TIMEOUT_SECONDS) as client:
                told = client.post(LANE_REVOKED_URL, json=revocation(user, not_before)).status_code == 204
            if not told:
                _not_forwarded(user)
        return not_before

    async def arevoke(self, user: str) -> int:
        """`revoke` for a route or any code on an event loop: the lane is told without blocking the loop."""
        not_before = self._revoke_here(user)
        if self._lane_to_tell(user):
            told = False
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(
                        transport=httpx.AsyncHTTPTransport(uds=str(self.settings.control_socket)),
                        timeout=LANE_TELL_TIMEOUT_SECONDS) as client:
                    answer = await client.post(LANE_REVOKED_URL, json=revocation(user, not_before))
                    told = answer.status_code == 204
            if not told:
                _not_forwarded(user)
        return not_before

    def _revoke_here(self, user: str) -> int:
        """The second after the latest `iat` this broker could have minted for `user` so far: the clock's,
        or a later floor `mint_time` raised it to (the gate's start cut-off, an earlier revocation). From
        the clock alone, a token minted a moment after a lane started, or after a first logout, and a
        logout in that same second would leave it live."""
        not_before = math.floor(self.mint_time(user, self.clock())) + 1
        self.record_revocation(user, not_before)
        return not_before

    def _lane_to_tell(self, user: str) -> bool:
        """Mounted without Redis, and the lane is there: a lane that is gone has no socket file (asked
        anyway, httpcore's failed connect would leak its socket)."""
        if not self.mounted or self.watch is not None:
            return False
        if self.settings.control_socket.exists():
            return True
        _not_forwarded(user)
        return False

    def record_revocation(self, user: str, not_before: int) -> None:
        """A revocation made here, or by a host app's broker beside this lane (`REVOKED_PATH`)."""
        self.revocations.prune(self.clock())
        self.revocations.revoke(user, not_before)
        # Redis keeps its own; a mounted core's is the lane's to keep (each worker would overwrite the file)
        if isinstance(self.revocations, Revocations) and not self.mounted:
            save_revocations(self.settings.data_dir, self.revocations)
        logger.info("event=revoked user=%s not_before=%d", user, not_before)
        self.published_changed()

    def apply_user_revocations(self) -> None:
        """The revocations a `users remove` or `rotate` left in the store (a removed or rotated user's grants
        refused on every gate): at start, and when the command says so (`USERS_CHANGED_PATH`). With Redis
        the command wrote the shared revocations itself, and the store has none to hand over."""
        if self._merge_user_revocations():
            self.published_changed()

    def _merge_user_revocations(self) -> bool:
        """The store's revocations into this broker's (never loosening one); whether there were any.

        A new one also covers every `iat` this broker may have minted for the user so far (`_revoke_here`):
        the command knew only the clock's second."""
        now = self.clock()
        found = store_revocations(self.users, now)
        if not found:
            return False
        self.revocations.prune(now)
        held = self.revocations.to_dict()["not_before"]
        for sub, not_before in found.items():
            if not_before > held.get(sub, not_before - 1):
                not_before = max(not_before, math.floor(self.mint_time(sub, now)) + 1)
            self.revocations.revoke(sub, not_before)
        if isinstance(self.revocations, Revocations):
            save_revocations(self.settings.data_dir, self.revocations)
        return True

    def published_changed(self) -> None:
        """Wake every long poll of the gate's (`GET /state`): what it holds may be stale now."""
        self._changed.set()
        self._changed = asyncio.Event()

    def stop_waiting(self) -> None:
        """The broker is stopping: every held long poll answers now, so a graceful stop ends within its
        time, and no poll is cancelled mid-wait (uvicorn would log that as an application error)."""
        self.stopping = True
        if self.watch is not None:
            self.watch.stop()
        self.published_changed()

    async def wait_for_change(self, timeout: float) -> None:
        """Until `published_changed` or `timeout` seconds; a waiter rechecks the version either way.

        With Redis, another broker's revocation arrives through the watch, which the first poll
        starts (it serves only polls, on their loop). While the watch is not subscribed, nothing
        would say that Redis changed, so the wait is cut to `UNWATCHED_RECHECK_SECONDS`.
        """
        if self.watch is not None:
            self.watch.start()
            if not self.watch.live:
                timeout = min(timeout, UNWATCHED_RECHECK_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
