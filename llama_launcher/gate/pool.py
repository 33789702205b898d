"""The gate's upstreams, and which of them serves a request.

The default single box has one upstream: a pool of one, where every request goes to it exactly as
before (no health is asked per request, nothing is counted). With several (`--upstream` repeated),
each upstream has its own `Health`, and a request goes to one that serves the grant's model:

- **the least busy**, by the gate's own count of its requests in flight there (no `/slots` round
  trip per request), ties broken round-robin so that sequential requests spread over equal upstreams;
- **ready ones first**: an upstream whose last `/health` failed, or whose connection just failed
  (`DOWN_SECONDS`), is tried only after every ready one, so a dead server costs no client an error;
- **another one on failure before the head** (refused, reset, 502 or 503): nothing reached the
  client yet, so trying the next candidate is safe. After the head a failure ends the stream;
- **resume and cancel go to the holder**: the upstream the conversation's chat went to (`holders`),
  and nowhere else, since no other upstream has the stream. A holder that is gone is `StreamLost`.

Health snapshots are read as cached: one older than `ROUTE_REFRESH_SECONDS` is refreshed in the
background, and only an upstream never asked yet is waited for, so routing costs no round trip on
the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from llama_direct.documents import HealthAnswer, HealthSlots, ModelEntry
from llama_direct.lanes import LaneRoute
from llama_direct.model_states import merge_models
from llama_direct.refusals import Refusal, StreamLost, UpstreamUnavailable
from llama_launcher.gate.health import Health
from llama_launcher.gate.holders import Holders, MemoryHolders
from llama_launcher.gate.upstream import Upstream

DOWN_SECONDS = 2.0
"""How long an upstream whose connection failed goes to the back of the line (then its health decides)."""
ROUTE_REFRESH_SECONDS = 5.0
"""How old a health snapshot routing still reads without asking again: a dead upstream is found by
its failed connection at once, so this only paces how soon a revived one or a new model is seen; each
refresh costs a `/health` and a `/v1/models` round trip (about 1.5 ms of gate CPU)."""



def member_key(address: str) -> str:
    """An upstream's public id: the same on every gate given the same address, and no address itself."""
    return hashlib.sha256(address.encode()).hexdigest()[:16]


def load_order(loads: Sequence[int], turn: int) -> list[int]:
    """Indices by fewest in flight, ties broken round-robin from `turn` (pure)."""
    count = len(loads)
    return sorted(range(count), key=lambda i: (loads[i], (i - turn) % count))


@dataclass(eq=False)
class Member:
    """One upstream: its door, its health, and what the gate has in flight there."""

    key: str
    upstream: Upstream
    health: Health
    in_flight: int = 0
    down_until: float = field(default=-math.inf)

    def usable(self, now: float) -> bool:
        return self.health.ready is not False and now >= self.down_until

    def failed(self) -> None:
        """A connection failed before any answer: to the back of the line for a while."""
        self.down_until = time.monotonic() + DOWN_SECONDS
        self.health.invalidate()

    def release(self) -> None:
        self.in_flight -= 1


class Attempts:
    """One request's upstreams, tried in order until one answers; then the refusal that ends it.

    `held`: the one upstream holding the conversation's stream (a resume or cancel); when it is
    gone, no other can take over, so the client hears `StreamLost` rather than a generic 502.
    """

    def __init__(self, members: Sequence[Member], *, held: bool = False) -> None:
        self.members = list(members)
        self.held = held
        self._next = 0
        self._last: Refusal | None = None

    @property
    def first(self) -> Member:
        return self.members[0]

    def left(self) -> bool:
        return self._next < len(self.members)

    def next(self) -> Member:
        if not self.left():
            raise StreamLost() if self.held else (self._last or UpstreamUnavailable())
        member = self.members[self._next]
        self._next += 1
        return member

    def failed(self, refusal: Refusal) -> None:
        self._last = refusal

    def keep(self, members: Sequence[Member]) -> None:
        """Only these of the members are worth trying (a grant that may not load: where it is loaded)."""
        self.members = [m for m in self.members if m in members]


class Pool:
    """Every upstream of one gate; `route` orders them for one request."""

    def __init__(
        self, upstreams: Sequence[tuple[str, Upstream]], model: str, holders: Holders | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("a gate needs at least one upstream")
        self.single = len(upstreams) == 1
        self.members = [
            Member(member_key(address), upstream, Health(upstream, model, learn_name=not self.single))
            for address, upstream in upstreams
        ]
        self.model = model
        self.holders: Holders = holders or MemoryHolders()
        self._turn = 0
        self._refreshing: set[asyncio.Task[Any]] = set()

    @property
    def first(self) -> Member:
        return self.members[0]

    async def route(self, model: str, lane: LaneRoute, conversation: str | None) -> Attempts:
        """The upstreams to try for one request, best first: a resume or cancel goes to its holder."""
        if self.single:
            return Attempts(self.members)
        if lane.continues_conversation and conversation is not None:
            held = await self.holders.get(conversation)
            holder = next((m for m in self.members if m.key == held), None)
            if holder is not None:
                return Attempts([holder], held=True)
        await self._refresh()
        now = time.monotonic()
        serving = [m for m in self.members if m.health.serves(model)] or self.members
        ready = [m for m in serving if m.usable(now)]
        rest = [m for m in serving if not m.usable(now)]
        ordered = [ready[i] for i in load_order([m.in_flight for m in ready], self._turn)] if ready else []
        self._turn += 1
        return Attempts(ordered + rest)

    async def chosen(self, member: Member, lane: LaneRoute, conversation: str | None) -> None:
        """A request was handed to `member`: count it, and remember it as the conversation's holder."""
        if self.single:
            return
        member.in_flight += 1
        if lane.opens_conversation and conversation is not None:
            await self.holders.put(conversation, member.key)

    async def _refresh(self) -> None:
        """Wait for upstreams never asked; start a refresh of stale ones and go on without it."""
        unknown = [m.health.snapshot() for m in self.members if m.health.ready is None]
        if unknown:
            await asyncio.gather(*unknown, return_exceptions=True)
        for member in self.members:
            if not member.health.is_fresh(ROUTE_REFRESH_SECONDS):
                task = asyncio.ensure_future(member.health.snapshot())
                self._refreshing.add(task)
                task.add_done_callback(self._refreshing.discard)

    async def snapshot(self) -> HealthAnswer:
        """The gate's `/health`: one upstream's as it is; several merged, so negotiation says
        `model_loading` or `gate_down` only when no upstream can serve."""
        if self.single:
            return await self.first.health.snapshot()
        snapshots = await asyncio.gather(*(m.health.snapshot() for m in self.members))
        return merge_snapshots(self.model, snapshots, [m.in_flight for m in self.members])

    async def close(self) -> None:
        for task in list(self._refreshing):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def shaping_limits(members: Sequence[Member], model: str) -> tuple[bool, int]:
    """(reads images, slot context) for `model` on every upstream in `members`: images only if each
    reads them, the smallest context, so a request handed on after a failure fits the next one too.
    `/props` is read where it is not known for the llama-server running now (once per start); one
    that cannot be read (down) does not narrow the limits; with none read, the first one's defaults."""
    healths = [m.health for m in members]
    stale = [h for h in healths if not h.props_known]
    if len(stale) == 1:
        await stale[0].ensure_props()
    elif stale:
        await asyncio.gather(*(h.ensure_props() for h in stale))
    known = [h for h in healths if h not in stale or h.props_known] or healths[:1]
    return all(h.vision_of(model) for h in known), min(h.context_of(model) for h in known)


def merge_snapshots(model: str, snapshots: Sequence[HealthAnswer], in_flight: Sequence[int]) -> HealthAnswer:
    """Several upstreams' health as one (pure): ready if any is, each model at its best state among
    the ready ones, slots summed, and a per-upstream list without addresses."""
    ready = [s for s in snapshots if s.get("model_ready")]
    models = cast(list[ModelEntry], merge_models(s.get("models", []) for s in ready))
    slots: HealthSlots = {"total": _summed(s["slots"]["total"] for s in ready),
                          "busy": _summed(s["slots"]["busy"] for s in ready)}
    return {
        "gate": "ok",
        "model_ready": bool(ready),
        "model": model,
        "vision": any(s.get("vision") for s in ready),
        "slots": slots,
        "router": any(s.get("router") for s in snapshots),
        "models": models,
        "upstreams": [
            {"ready": bool(s.get("model_ready")), "models": [e["id"] for e in s.get("models", [])], "in_flight": n}
            for s, n in zip(snapshots, in_flight, strict=True)
        ],
    }


def _summed(counts: Iterable[int | None]) -> int | None:
    """A count summed over the upstreams that know it; None when none does (routers have no slots)."""
    known = [count for count in counts if count is not None]
    return sum(known) if known else None
