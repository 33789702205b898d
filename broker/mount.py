"""The broker as routes that a FastAPI app mounts: negotiation, the JWKS, the model list and the baselines.

An app that already has users (Unsloth Studio, any FastAPI backend) should not run a second server
with a second login to hand its users lane tokens. It includes `direct_router(core, who=...)` and
says who the user is; the broker keeps what only it can judge: the grant, the rate limit, and its
CSRF rules. The standalone broker (`broker.app.create_app`) is these same routes, with its own
login as the "who", so there is one broker, not two.

The CSRF rules hold whatever the host's auth is: the broker cannot see whether the host
authenticates by cookie, so every user the host names is taken as a credential a browser may send on
its own (`Caller.ambient`), and a request from another site (its `Origin`, or `Sec-Fetch-Site`) is
refused. A refusal is answered by the route itself (`_RefusalRoute`), in the broker's words, since
the host app has exception handlers of its own.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from broker.access import Caller, grant_origin, rate_limit, request_scheme
from broker.accounts import allowed_for, listed_for, policy_for, who_am_i
from broker.baseline import autoload_option, baseline, baseline_model
from broker.bodies import MAX_CHAT_BODY_BYTES, MAX_SMALL_BODY_BYTES, read_body
from broker.budget import my_usage, negotiation_policy
from broker.core import BrokerCore
from broker.models import fleet_listing, listing
from broker.negotiation import negotiate, unsupported_reason
from broker.negotiation_options import Options
from broker.responses import NO_STORE, json_response, refusal_response
from broker.settings import BrokerSettings, direct_stream_enabled, normalise_origin
from llama_direct.budgets import MY_USAGE_PATH
from llama_direct.lanes import LANE_ROUTES, NEGOTIATION_PATH, UNUSED_GRANT_HEADER, WHOAMI_PATH, LaneRoute
from llama_direct.refusals import LOGIN_REQUIRED, Refusal, RequestRefusal
from llama_direct.tokens import new_jti

WhoIs = Callable[[Request], str | None] | Callable[[Request], Awaitable[str | None]]
"""The host's answer to "who is asking": a stable user id (the token's `sub`), or None for no one."""
PinFor = Callable[[Request], str | None] | Callable[[Request], Awaitable[str | None]]
"""The host's system prompt for the grant this request gets (negotiation, or a baseline's), or None:
the gate puts it first and refuses the client's own (`Grant.system_prompt`)."""
Identify = Callable[[Request], Awaitable[Caller | None]]
"""The broker's own form of it: the caller, and whether its credential is ambient."""


@dataclass(frozen=True)
class Front:
    """What one mount of the broker decides for itself; the rest comes from the core's settings."""

    identify: Identify
    allowed_origins: frozenset[str]
    """Origins beside the app's own that may ask for a grant (normalised)."""
    lane_url: str | None
    """The lane's base as the browser reaches it; None: the core's policy builds it per request."""
    enabled: Callable[[], bool]
    """Asked at each negotiation, so that a switch flipped at run time takes effect at once."""
    pin: PinFor | None = None
    """The host's pinned system prompt, asked for each grant (None: nothing is pinned)."""
    may_unload: Callable[[Caller], bool] = lambda caller: False
    """Whether this caller may unload a router's model (`broker.unload`): the standalone broker's owner; a
    host's users never (an unload ends every user's replies), and a mount serves no unload."""

    async def system_prompt(self, request: Request) -> str | None:
        if self.pin is None:
            return None
        prompt = self.pin(request)
        return await prompt if inspect.isawaitable(prompt) else prompt

    async def caller(self, request: Request) -> Caller:
        caller = await self.identify(request)
        if caller is None:
            raise RequestRefusal(LOGIN_REQUIRED)
        return caller


def mounted_core(lane_settings: Mapping[str, Any], *, redis_url: str | None = None) -> BrokerCore:
    """The broker's state for a host app, on the settings of the lane it runs beside.

    `lane_settings` is what the lane's own broker half runs with (`llama_launcher.lane.Lane.broker_settings`):
    the data dir, whose signing keys that half publishes to the gate, so the tokens minted here are
    ones the gate trusts; the gate's socket, for the baselines; the models, the cap and the limits.
    Nothing here rotates the keys (several workers of the host would each stage a successor), and
    there is no owner's token and no session file: the host's users are its own. `redis_url`
    shares the rate counters and revocations between the host's workers, as between brokers.
    """
    settings = BrokerSettings.from_dict({**lane_settings, "key_rotation_hours": 0})
    return BrokerCore(settings, None, redis_url=redis_url)


def direct_router(
    core: BrokerCore,
    *,
    who: WhoIs,
    allowed_origins: Iterable[str] | None = None,
    lane_url: str | None = None,
    enabled: Callable[[], bool] = direct_stream_enabled,
    system_prompt: PinFor | None = None,
) -> APIRouter:
    """The broker's routes for a host app's `include_router`, behind the host's own auth.

    `who(request)` (plain or async) names the user, or None for a 401 `login_required`.
    `allowed_origins` are the origins beside the app's own that may ask for a grant (None: the
    core's settings). `lane_url` is the lane's base as the browser reaches it, such as
    `https://llm.example/direct` (None: the core's `public_url` or `gate_port`, else the request's
    own host with `/direct`). `enabled()` false answers every negotiation `supported: false,
    reason: disabled`, so every reply goes through the baselines (default: `UNSLOTH_DIRECT_STREAM`).
    `system_prompt(request)` (plain or async), when given, pins the prompt it returns into the grant
    that request gets, on the lane and on the baselines alike; None from it pins nothing.
    The router's lifespan starts and stops the core's link to the gate.
    """
    origins = core.allowed_origins if allowed_origins is None else _normalised(allowed_origins)
    if lane_url is not None and not _absolute(lane_url):
        raise ValueError("lane_url must be an absolute http(s) URL without query or fragment")
    front = Front(
        identify=_host_identity(who),
        allowed_origins=origins,
        lane_url=lane_url.rstrip("/") if lane_url is not None else None,
        enabled=enabled,
        pin=system_prompt,
    )
    return broker_router(core, front)


def broker_router(core: BrokerCore, front: Front) -> APIRouter:
    """The routes every broker serves, for `front`: the host's mount, or the standalone broker's."""

    @contextlib.asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        await core.gate.start()
        try:
            yield
        finally:
            await core.gate.stop()

    router = APIRouter(route_class=_RefusalRoute, lifespan=lifespan)
    _add_negotiation(router, core, front)

    @router.get("/.well-known/jwks.json")
    async def jwks() -> Response:
        return json_response(core.keyring.jwks(core.clock()), headers={"Cache-Control": "no-cache"})

    @router.get("/v1/models")
    async def models(request: Request) -> Response:
        caller = await front.caller(request)
        health = await core.gate.fresh()
        if core.fleet_models is not None:
            answer = fleet_listing(core.own_models(health), core.fleet_models.others(core.clock()))
        else:
            answer = listing(core.own_models(health))
        answer = listed_for(caller.limits, answer)
        if health.router and front.may_unload(caller):
            answer["can_unload"] = True
        return json_response(answer, headers=NO_STORE)

    @router.get(MY_USAGE_PATH)
    async def usage(request: Request) -> Response:
        caller = await front.caller(request)
        return json_response(my_usage(core, caller, request.query_params.getlist("since")), headers=NO_STORE)

    @router.get(WHOAMI_PATH)
    async def whoami(request: Request) -> Response:
        caller = await front.caller(request)
        return json_response(who_am_i(caller.user, caller.name), headers=NO_STORE)

    for route in LANE_ROUTES:
        if route.body is not None:
            _add_baseline(router, core, front, route)
    return router


def _add_negotiation(router: APIRouter, core: BrokerCore, front: Front) -> None:
    @router.api_route(NEGOTIATION_PATH, methods=["GET", "POST"])
    async def direct_stream(request: Request) -> Response:
        caller = await front.caller(request)
        origin = grant_origin(core, request, caller, front.allowed_origins)
        if request.method == "GET":
            options = Options.from_query(request.query_params.multi_items())
        else:
            options = Options.from_body(await read_body(request, MAX_SMALL_BODY_BYTES))
        now = core.clock()
        rate_limit(core, caller.user, now)
        health = await core.gate.fresh()
        allowed = allowed_for(caller.limits, core.allowed_models(health))
        enabled = front.enabled()
        minted_at, jti = core.mint_time(caller.user, now), new_jti()
        policy = negotiation_policy(core, caller, options, policy=policy_for(core.policy, caller.limits),
                                    allowed=allowed, live=unsupported_reason(enabled, health) is None, jti=jti,
                                    minted_at=minted_at)
        answer = negotiate(
            options,
            user=caller.user,
            origin=origin,
            url=front.lane_url or core.policy.lane_url(request_scheme(request), request.headers.get("host", "")),
            policy=policy,
            health=health,
            allowed=allowed,
            enabled=enabled,
            conversations=core.conversations,
            system_prompt=await front.system_prompt(request),
            issuer=core.issuer(),
            now=minted_at,
            jti=jti,
        )
        # The conversation's id in a header too: an HAProxy at the edge pins it to this machine from
        # there (a stick table stores a header reliably; a body may arrive after the rules ran).
        conversation = answer.get("conversation_id")
        headers = {**NO_STORE, "X-Conversation-Id": conversation} if isinstance(conversation, str) else NO_STORE
        return json_response(answer, headers=headers)

    @router.post(NEGOTIATION_PATH + "/revoke")
    async def revoke(request: Request) -> Response:
        caller = await front.caller(request)
        grant_origin(core, request, caller, front.allowed_origins)
        not_before = await core.arevoke(caller.user)
        return json_response({"revoked": True, "not_before": not_before}, headers=NO_STORE)


def _add_baseline(router: APIRouter, core: BrokerCore, front: Front, route: LaneRoute) -> None:
    """`route` off the lane, at its own path: where `fallback_url` sends a client whose lane is off."""

    async def relay(request: Request) -> Response:
        caller = await front.caller(request)
        grant_origin(core, request, caller, front.allowed_origins)
        rate_limit(core, caller.user, core.clock())
        autoload = autoload_option(request.query_params.getlist("autoload"))
        body = await read_body(request, MAX_CHAT_BODY_BYTES)
        health = await core.gate.fresh()
        model = baseline_model(core, body, health, caller.limits)
        return await baseline(core, caller.user, body, request.headers.get("content-type"), model=model,
                              autoload=autoload, route=route, limits=caller.limits,
                              system_prompt=await front.system_prompt(request),
                              unused_grant=request.headers.get(UNUSED_GRANT_HEADER))

    router.add_api_route(route.path, relay, methods=[route.method], name=f"baseline_{route.name}")


def _host_identity(who: WhoIs) -> Identify:
    """The host's user as an ambient caller: the broker cannot tell whether the host's auth is a cookie."""

    async def identify(request: Request) -> Caller | None:
        user = who(request)
        if inspect.isawaitable(user):
            user = await user
        return Caller(user=user) if user else None

    return identify


def _absolute(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not (parts.query or parts.fragment)


def _normalised(origins: Iterable[str]) -> frozenset[str]:
    normalised = {origin: normalise_origin(origin) for origin in origins}
    bad = [origin for origin, value in normalised.items() if value is None]
    if bad:
        raise ValueError(f"allowed_origins must be origins like https://app.example:8443, not {bad[0]!r}")
    return frozenset(value for value in normalised.values() if value is not None)


class _RefusalRoute(APIRoute):
    """A route that answers its own refusals: the host app's exception handlers are its own, and a
    refusal must reach the client in the broker's words (status, reason, `Retry-After`) whatever they are."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Refusal as refusal:
                return refusal_response(refusal)

        return answer
