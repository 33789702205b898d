"""llama-server's state as the gate reports it on `GET /health`: ready, slots, models and who reads images.

A llama-server router (`/props` says `"role": "router"`, launched or attached) serves many models;
then `/v1/models` gives each model's state (`unloaded`, `loading`, `loaded`) and whether it reads
images, and `model_ready` means the router itself answers. The snapshot never holds a file path.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import time
from dataclasses import dataclass
from urllib.parse import quote

from llama_direct.documents import HealthAnswer, HealthSlots, ModelEntry
from llama_direct.llama_server import NotListening, public_name
from llama_direct.refusals import (
    Refusal,
)
from llama_launcher.gate.bounds import FALLBACK_CONTEXT
from llama_launcher.gate.load_progress import LoadProgress
from llama_launcher.gate.single_flight import SingleFlight
from llama_launcher.gate.upstream import (
    Upstream,
    get_json,
)

HEALTH_INTERVAL = 0.5
HEALTH_TIMEOUT = 2.0
PROPS_RETRY = 5.0


class Health:
    """llama-server's state as `/health` reports it, asked at most every 0.5 s; `/props` once per start.

    A respawned llama-server has a new key, so the key's digest tells whether `/props` (and so
    `vision` and one slot's `context`) belongs to the llama-server running now. A failed read is
    retried at most every `PROPS_RETRY` seconds, so a llama-server without `/props` does not cost
    every chat a round trip.
    """

    def __init__(self, upstream: Upstream, model: str, *, learn_name: bool = False) -> None:
        self.upstream = upstream
        self.model = model
        self.learn_name = learn_name
        """One of several upstreams: a single-model one is known by the name its `/v1/models` gives,
        not the launcher's default name, since each upstream of a fleet may serve another model."""
        self.ready: bool | None = None
        """What the last `/health` said; None before the first answer."""
        self.vision = False
        self.tools = False
        """Whether the chat template takes tools (`/props` `chat_template_caps.supports_tools`)."""
        self.context = FALLBACK_CONTEXT
        self.router = False
        self.models: dict[str, ModelState] = {}
        self.router_tools: dict[str, bool] = {}
        """Behind a router: whether each model's chat template takes tools, read from its `/props` once it
        was loaded (`learn_router_tools`), for the router running now."""
        self._router_props_failed: dict[str, float] = {}
        self.load_progress = LoadProgress(upstream)
        self._props_for: bytes | None = None
        self._digested: tuple[bytes, bytes] | None = None
        """(the authorization value, its digest): asked on every chat, hashed once per key."""
        self._props_failed_at = -math.inf
        self._props_read: SingleFlight[None] = SingleFlight()
        self._snapshot: HealthAnswer | None = None
        self._snapshot_at = -math.inf
        self._asking: SingleFlight[HealthAnswer] = SingleFlight()

    async def snapshot(self) -> HealthAnswer:
        """The last answer while it is under `HEALTH_INTERVAL` old, unless it says ready and the
        upstream no longer is: a llama-server that just died (its supervisor says so on the spot) is
        reported at once, not half a second later, or the broker would grant streams into the respawn."""
        cached = self._snapshot
        if (cached is not None and time.monotonic() - self._snapshot_at < HEALTH_INTERVAL
                and (not cached["model_ready"] or self.upstream.is_ready())):
            return cached
        return await self._asking.join(self._query)

    def invalidate(self) -> None:
        """A connection to this upstream just failed: the next snapshot asks it afresh."""
        self.ready = False
        self._snapshot_at = -math.inf

    def is_fresh(self, max_age: float = HEALTH_INTERVAL) -> bool:
        return time.monotonic() - self._snapshot_at < max_age

    @property
    def props_known(self) -> bool:
        """Whether `vision`, `context` and `router` come from the llama-server running now's `/props`."""
        return self._props_for is not None and self._props_for == self._key_digest()

    def serves(self, model: str) -> bool:
        """Whether this upstream's last answers list `model` (a router's list, or a single server's name)."""
        if self.router:
            return model in self.models
        return model == self.model

    async def ensure_props(self) -> None:
        """Learn `vision` and `context` from `/props` unless read from the llama-server running now."""
        digest = self._key_digest()
        if digest is None or digest == self._props_for:
            return
        if time.monotonic() - self._props_failed_at < PROPS_RETRY:
            return
        await self._props_read.join(lambda: self._read_props(digest))

    def _key_digest(self) -> bytes | None:
        try:
            authorization = self.upstream.authorization()
        except NotListening:
            return None
        digested = self._digested
        if digested is None or digested[0] is not authorization:  # the launcher's key: one object per key
            digested = self._digested = (authorization, hashlib.sha256(authorization).digest())
        return digested[1]

    async def _read_props(self, digest: bytes) -> None:
        try:
            status, props = await get_json(self.upstream, "/props", timeout=HEALTH_TIMEOUT)
        except Refusal:
            status, props = 0, None
        if status == 200 and isinstance(props, dict):
            modalities = props.get("modalities")
            self.vision = isinstance(modalities, dict) and modalities.get("vision") is True
            self.tools = _takes_tools(props)
            settings = props.get("default_generation_settings")
            n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
            if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0:
                self.context = n_ctx
            self.router = props.get("role") == "router"
            self.router_tools.clear()
            self._router_props_failed.clear()
            if self.learn_name and not self.router:
                await self._learn_name()
            self._props_for = digest
        else:
            self._props_failed_at = time.monotonic()

    async def _learn_name(self) -> None:
        with contextlib.suppress(Refusal):
            status, listing = await get_json(self.upstream, "/v1/models", timeout=HEALTH_TIMEOUT)
            names = list(parse_models(listing)) if status == 200 else []
            if len(names) == 1:
                self.model = public_name(names[0])

    def vision_of(self, model: str) -> bool:
        """Whether `model` reads images: per model behind a router, llama-server's `/props` otherwise."""
        if self.router:
            state = self.models.get(model)
            return state is not None and state.vision
        return self.vision

    def context_of(self, model: str) -> int:
        """One slot's context for `model`. Behind a router, the preset's `--ctx-size` (the router's own
        `/props` says 0, and asking for a model's `/props` loads it), else `FALLBACK_CONTEXT`,
        llama-server's usual default: a prompt let through that the child cannot hold is still refused
        by llama-server, after tokenizing no more than that context's bounds allow."""
        if self.router:
            state = self.models.get(model)
            return state.context if state is not None and state.context is not None else FALLBACK_CONTEXT
        return self.context

    async def model_status(self, model: str) -> str | None:
        """`model`'s state asked of the router now (a grant that may not load must not trust a poll)."""
        await self.ensure_props()
        if not self.router:
            return None
        await self._read_models()
        state = self.models.get(model)
        return state.status if state is not None else None

    async def _read_models(self) -> None:
        with contextlib.suppress(Refusal):
            status, listing = await get_json(self.upstream, "/v1/models", timeout=HEALTH_TIMEOUT)
            if status == 200:
                self.models = parse_models(listing)
                self.load_progress.watch(name for name, state in self.models.items() if state.status == "loading")

    async def learn_router_tools(self) -> None:
        """Read each loaded model's `/props` once: `GET /props?model=NAME&autoload=false`, which the router
        answers from the model's child and never loads a model for (one unloaded since is a 400). Asking
        an unloaded model's `/props` would load it, so a model not loaded yet is not known to take tools;
        a failed read is retried after `PROPS_RETRY` seconds."""
        now = time.monotonic()
        for name, state in self.models.items():
            if state.status != "loaded" or name in self.router_tools:
                continue
            if now - self._router_props_failed.get(name, -math.inf) < PROPS_RETRY:
                continue
            try:
                status, props = await get_json(self.upstream, f"/props?model={quote(name, safe='')}&autoload=false",
                                               timeout=HEALTH_TIMEOUT)
            except Refusal:
                status, props = 0, None
            if status == 200 and isinstance(props, dict):
                self.router_tools[name] = _takes_tools(props)
            else:
                self._router_props_failed[name] = now

    def _model_list(self, ready: bool) -> list[ModelEntry]:
        if self.router:
            return [self._router_entry(name, state) for name, state in self.models.items()]
        entry: ModelEntry = {"id": self.model, "status": "loaded" if ready else "loading", "vision": self.vision}
        if self.tools:
            entry["tools"] = True
        return [entry]

    def _router_entry(self, name: str, state: ModelState) -> ModelEntry:
        entry: ModelEntry = {"id": name, "status": state.status, "vision": state.vision}
        if self.router_tools.get(name):
            entry["tools"] = True
        progress = self.load_progress.of(name).get("progress")
        if progress is not None:
            entry["progress"] = progress
        return entry

    async def _query(self) -> HealthAnswer:
        ready = False
        slots: HealthSlots = {"total": None, "busy": None}
        if self.upstream.is_ready():
            with contextlib.suppress(Refusal):
                status, _ = await get_json(self.upstream, "/health", timeout=HEALTH_TIMEOUT)
                ready = status == 200
        if ready:
            await self.ensure_props()
        if ready and self.router:
            await self._read_models()
            await self.learn_router_tools()
        elif ready:
            with contextlib.suppress(Refusal):
                status, found = await get_json(self.upstream, "/slots", timeout=HEALTH_TIMEOUT)
                if status == 200 and isinstance(found, list):
                    busy = sum(1 for slot in found if isinstance(slot, dict) and slot.get("is_processing"))
                    slots = {"total": len(found), "busy": busy}
        self.ready = ready
        snapshot: HealthAnswer = {"gate": "ok", "model_ready": ready, "model": self.model, "vision": self.vision,
                    "slots": slots, "router": self.router, "models": self._model_list(ready)}
        self._snapshot, self._snapshot_at = snapshot, time.monotonic()
        return snapshot


@dataclass(frozen=True)
class ModelState:
    """One model behind a router, as `/v1/models` says: its state and whether it reads images."""

    status: str
    vision: bool
    context: int | None = None
    """One slot's context from the preset's `--ctx-size`; None where the model's own default applies."""


MODEL_STATES = frozenset({"unloaded", "loading", "loaded"})


def _takes_tools(props: dict[str, object]) -> bool:
    """Whether a `/props` answer says the chat template takes tools (`chat_template_caps.supports_tools`)."""
    caps = props.get("chat_template_caps")
    return isinstance(caps, dict) and caps.get("supports_tools") is True


def parse_models(listing: object) -> dict[str, ModelState]:
    """A router's `/v1/models`, reduced to name -> state: its `status.args` and `preset` hold file paths."""
    models: dict[str, ModelState] = {}
    data = listing.get("data") if isinstance(listing, dict) else None
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        status = item.get("status")
        value = status.get("value") if isinstance(status, dict) else None
        architecture = item.get("architecture")
        inputs = architecture.get("input_modalities") if isinstance(architecture, dict) else None
        models[item["id"]] = ModelState(
            status=value if value in MODEL_STATES else "unloaded",
            vision=isinstance(inputs, list) and "image" in inputs,
            context=_ctx_size(status.get("args") if isinstance(status, dict) else None),
        )
    return models


def _ctx_size(args: object) -> int | None:
    """`--ctx-size N` (or `-c N`) in a router child's argv; None where absent or 0 (the model's own)."""
    if not isinstance(args, list):
        return None
    for flag, value in itertools.pairwise(args):
        if flag in ("--ctx-size", "-c") and isinstance(value, str) and value.isdigit() and int(value) > 0:
            return int(value)
    return None
