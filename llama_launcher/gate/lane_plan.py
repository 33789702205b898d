"""A lane request's plan: where it goes and what it sends, made once from its claims and route.

The grant's model decides three things: which upstreams may serve the request (`Pool.route`), the
limits its body is shaped to on those upstreams (`Gate.policy_for`), and where it may be loaded
(`Gate.load_target`). `plan_lane` asks each once, in that order, and returns a `LanePlan`, a plain
value the connection only reads: it connects to `attempts` in turn and sends `outgoing`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from llama_direct.refusals import UNEXPECTED_BODY, RequestRefusal
from llama_direct.tokens import Claims
from llama_launcher.gate.core import Gate
from llama_launcher.gate.outgoing import lane_request
from llama_launcher.gate.pool import Attempts
from llama_launcher.gate.scope import Route
from llama_launcher.gate.shapers import SHAPE_IN_THREAD_BYTES, SHAPERS
from llama_launcher.gate.upstream import Upstream


@dataclass(frozen=True, slots=True)
class LanePlan:
    """One lane request, decided: its route, the upstreams to try in order, the body and target
    llama-server gets, and the CORS origin its answer carries (two-port mode only)."""

    route: Route
    attempts: Attempts
    body: bytes
    target: str
    cors: str | None

    def outgoing(self, upstream: Upstream) -> bytes:
        """What `upstream` receives: a head built from scratch, then the shaped body."""
        return lane_request(upstream, self.route, self.target, self.body) + self.body


async def plan_lane(gate: Gate, route: Route, claims: Claims, body: bytes, *, cors: bool) -> LanePlan:
    """The plan of a checked request whose body is whole, or the refusal that answers it."""
    grant = claims.grant
    attempts = await gate.pool.route(grant.model, route.lane, route.conversation_id)
    if route.lane.body is None:
        if body:
            raise RequestRefusal(UNEXPECTED_BODY)
        target = route.upstream_target
    else:
        shape = SHAPERS[route.lane.body]
        policy = await gate.policy_for(attempts.members, grant.model)
        if policy.vision or len(body) > SHAPE_IN_THREAD_BYTES:
            body = await asyncio.to_thread(shape, body, grant, policy)
        else:
            body = shape(body, grant, policy)
        # a body names its model: told not to load it where the grant says so
        target = await gate.load_target(attempts, claims, route.upstream_target)
    return LanePlan(route, attempts, body, target, grant.origin if cors else None)
