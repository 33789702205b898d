"""The baseline: a lane request sent through the broker and the gate's private socket, for comparison
and fallback.

Every lane route that takes a body has one, at the same path off the lane (`Policy.fallback_for`
names it), so a client whose lane is off re-sends the same request there. It serves the model the
body names, as negotiation would grant it: one the user may not use is 400 `unknown_model` here,
never an answer from another model. The body is read once for its `model` only; the gate shapes it
as it shapes any lane request.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import AsyncIterator

import httpx
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from broker.accounts import allowed_for, policy_for
from broker.budget import BASELINE_LANE, reserve
from broker.core import BrokerCore
from broker.gate_health import GateHealth
from broker.handover import handed_grant
from broker.models import choose_model
from broker.negotiation_options import QUERY_BOOLEANS
from broker.responses import (
    JSON_TYPE,
)
from llama_direct.lanes import LANE_PREFIX, LaneRoute
from llama_direct.refusals import (
    INVALID_OPTION,
    GateUnavailable,
    IssuedBeforeGateStart,
    RequestRefusal,
    TokenSpent,
    UnknownModel,
)
from llama_direct.tokens import Grant, mint, new_jti
from llama_direct.users import Limits

logger = logging.getLogger(__name__)


def body_model(body: bytes) -> object:
    """The `model` a chat body names, or None (absent, null, or a body that is not a JSON object:
    the gate refuses that one with its own words)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value.get("model") if isinstance(value, dict) else None


def body_length(body: bytes, route: LaneRoute) -> int | None:
    """The generation length the body asks (the route's own length field), when it names a whole number:
    what the baseline reserves of a budget, rather than the whole cap."""
    if not route.length_fields:
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    asked = value.get(route.length_fields[0]) if isinstance(value, dict) else None
    return asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None


def autoload_option(values: list[str]) -> bool:
    """`?autoload=false` (llama-server's own spelling) keeps this request from loading a model."""
    if not values:
        return True
    if len(values) > 1 or values[0].lower() not in QUERY_BOOLEANS:
        raise RequestRefusal(INVALID_OPTION, "autoload")
    return QUERY_BOOLEANS[values[0].lower()]


def baseline_model(core: BrokerCore, body: bytes, health: GateHealth, limits: Limits | None = None) -> str:
    """The model the body names when the user may use it (within a named user's `limits`), the default
    when it names none."""
    asked = body_model(body)
    if asked is not None and not isinstance(asked, str):
        raise UnknownModel(None)
    return choose_model(asked, allowed_for(limits, core.allowed_models(health)))


async def baseline(
    core: BrokerCore, user: str, body: bytes, content_type: str | None, *, model: str, route: LaneRoute,
    autoload: bool = True, limits: Limits | None = None, system_prompt: str | None = None,
    unused_grant: str | None = None,
) -> Response:
    """The fallback: the same request through the gate's private side, with a token minted for `route`
    and `model` (from `baseline_model`; a load it may cause is charged by the caller, as at negotiation),
    its cap held to a named user's `max_tokens`, pinning `system_prompt` as negotiation would. Under the
    lane grant its client could not use (`unused_grant`, `broker.handover`) when the gate still holds
    that grant unspent; else under a reservation of its own."""
    now = core.mint_time(user, core.clock())
    policy = policy_for(core.policy, limits)
    asked = body_length(body, route)
    asked = policy.max_tokens_cap if asked is None else min(asked, policy.max_tokens_cap)
    pin = system_prompt if system_prompt is not None else core.policy.system_prompts.get(model)
    grant = functools.partial(Grant, routes=(route.key,), model=model, autoload=autoload, system_prompt=pin,
                              streams=policy.streams)
    send = functools.partial(_sent, core, user, body, content_type, route=route, now=now)
    handed = handed_grant(core, unused_grant, user=user, route=route, model=model, minted_at=now)
    if handed is not None:
        upstream = await send(grant(max_tokens=min(asked, handed.max_tokens)), handed.jti, handed.expires_at)
        if not await _refused_for(upstream, TokenSpent.reason.code):
            return _RelayResponse(upstream, _headers(upstream))
    jti = new_jti()
    cap = reserve(core, user=user, limits=limits, asked=asked, model=model, route=route, lane=BASELINE_LANE, jti=jti,
                  minted_at=now, ttl=core.settings.token_ttl)
    upstream = await send(grant(max_tokens=cap), jti, math.floor(now) + core.settings.token_ttl)
    return _RelayResponse(upstream, _headers(upstream))


def _headers(upstream: httpx.Response) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    upstream_type = upstream.headers.get("content-type")
    if upstream_type:
        headers["Content-Type"] = upstream_type
    return headers


async def _sent(core: BrokerCore, user: str, body: bytes, content_type: str | None, grant: Grant, jti: str,
                expires_at: int, *, route: LaneRoute, now: float) -> httpx.Response:
    """The gate's answer to `grant` under `jti`, expiring at `expires_at` (what its reservation covers)."""
    upstream = await _send(core, user, body, content_type, grant=grant, route=route, now=now, jti=jti,
                           ttl=expires_at - math.floor(now))
    retry = math.floor(core.clock()) + 1
    if expires_at - retry >= 1 and await _refused_for(upstream, IssuedBeforeGateStart.reason.code):
        # The gate restarted after this broker last looked: its cut-off is at most the second after
        # this refusal, and its leeway lets an `iat` that far ahead start at once. The same grant id
        # keeps the same reservation, which the gate now reports under.
        upstream = await _send(core, user, body, content_type, grant=grant, route=route, now=retry, jti=jti,
                               ttl=expires_at - retry)
    return upstream


async def _send(core: BrokerCore, user: str, body: bytes, content_type: str | None, *, grant: Grant,
                route: LaneRoute, now: float, jti: str, ttl: int) -> httpx.Response:
    issuer = core.issuer()
    minted = mint(
        issuer.key,
        issuer=issuer.issuer,
        audience=issuer.audience,
        subject=user,
        scope=route.scope,
        grant=grant,
        now=now,
        ttl=ttl,
        jti=jti,
    )
    client = core.gate.client
    request = client.build_request(
        route.method,
        LANE_PREFIX + route.path,
        content=body,
        headers={"authorization": f"Bearer {minted.token}", "content-type": content_type or JSON_TYPE},
    )
    try:
        return await client.send(request, stream=True)
    except httpx.HTTPError:
        raise GateUnavailable() from None


async def _refused_for(upstream: httpx.Response, reason: str) -> bool:
    """Whether `upstream` is the gate's 401 for `reason` (its small body read, and the answer closed if so)."""
    if upstream.status_code != 401:
        return False
    try:
        error = json.loads(await upstream.aread()).get("error")
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
    if isinstance(error, dict) and error.get("reason") == reason:
        await upstream.aclose()
        return True
    return False


class _RelayResponse(StreamingResponse):
    """The gate's bytes as they come. The upstream is closed when this answer ends however it ends,
    outside the cancelled scope of a client that left, so the gate sees the disconnect at once.
    """

    def __init__(self, upstream: httpx.Response, headers: dict[str, str]) -> None:
        super().__init__(_relay(upstream), status_code=upstream.status_code, headers=headers)
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._upstream.aclose()


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """A cut upstream ends the stream, as a cut lane would: the client sees it end early."""
    if upstream.is_stream_consumed:  # a 401 whose small body was read for its reason
        yield upstream.content
        return
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        logger.warning("event=baseline_cut status=%d", upstream.status_code)
