"""The fleet's model list in Redis, so that the picker behind an edge lists every machine's models.

Behind an HAProxy that routes by model (`llama-direct haproxy-config --gate HOST:PORT=MODEL,...`),
each `serve` stack fronts only its own machine's llama-server, so each broker knows only its own
gate's models, and `GET /v1/models` would depend on which machine answered. So each broker publishes
its models (name, state, vision, progress: never a path) in one Redis hash per audience
(`ld:models:<aud>`), under its own `iss` (each broker's first `--issuer`), and lists the union: its
own models first, then the others', each once at its best state (`broker.models.fleet_listing`).

Cost: the broker publishes when it has just read its gate's health anyway (`GateLink.on_health`), and
at most every `PUBLISH_SECONDS`, or at once when its models changed: no timer of its own. An idle
broker reads its gate's health every `IDLE_INTERVAL_SECONDS` (30 s), so an entry lives
`ENTRY_TTL_SECONDS` (45 s) past its publication; a broker that stopped or lost its gate drops out of
the others' lists within that (a gate that is down publishes no models at once). The edge's health
checks stop routing to a dead machine within 4 s meanwhile, so a listed model whose machines are all
down gets HAProxy's 503 for those 45 s at most.

Redis down: the listing falls back to this broker's own models (a listing grants nothing; the
negotiation decides, and a model its own gate does not serve stays `unknown_model` there), and a
publication that fails is logged and tried again `PUBLISH_SECONDS` later. Each Redis call may stall
the broker up to the client's 1 s timeout, as every other shared-state call does.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, cast

from broker.gate_link import IDLE_INTERVAL_SECONDS
from llama_direct.documents import ModelEntry

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

MODELS_PREFIX = "ld:models:"
PUBLISH_SECONDS = 5.0
ENTRY_TTL_SECONDS = IDLE_INTERVAL_SECONDS + 15.0
MAX_ENTRY_BYTES = 64 * 1024
"""An entry larger than this is ignored: a few hundred models' names and states fit easily."""


class FleetModels:
    """This broker's entry in the audience's hash, and the others' entries."""

    def __init__(self, client: redis.Redis, audience: str, issuer: str) -> None:
        self._redis = client
        self._key = MODELS_PREFIX + audience
        self._issuer = issuer
        self._published: list[ModelEntry] | None = None
        self._published_at = -PUBLISH_SECONDS

    def publish(self, models: list[ModelEntry], now: float) -> None:
        """Write this broker's models when they changed or `PUBLISH_SECONDS` passed; never raises."""
        if models == self._published and now - self._published_at < PUBLISH_SECONDS:
            return
        self._published, self._published_at = models, now
        entry = json.dumps({"until": now + ENTRY_TTL_SECONDS, "models": models}, separators=(",", ":"))
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(self._key, self._issuer, entry)
            pipe.expire(self._key, int(ENTRY_TTL_SECONDS) + 1)
            pipe.execute()
        except Exception as exc:  # redis-py's errors, OSError: a listing is not worth failing a poll for
            self._published = None
            logger.warning("event=fleet_models_publish_failed error=%s", type(exc).__name__)

    def others(self, now: float) -> list[object]:
        """The model lists the other brokers published and still stand by; none when Redis fails."""
        try:
            raw = cast(dict[bytes, bytes], self._redis.hgetall(self._key))  # the sync client answers a dict
        except Exception as exc:  # as in `publish`: the caller lists its own models
            logger.warning("event=fleet_models_read_failed error=%s", type(exc).__name__)
            return []
        found: list[object] = []
        for issuer, value in raw.items():
            if issuer.decode(errors="replace") == self._issuer or len(value) > MAX_ENTRY_BYTES:
                continue
            try:
                entry = json.loads(value)
            except (ValueError, RecursionError):
                continue
            until = entry.get("until") if isinstance(entry, dict) else None
            if isinstance(until, int | float) and until > now:
                found.append(entry.get("models"))
        return found
