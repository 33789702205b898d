"""The broker's two FastAPI apps: the public one the gate relays to, and the gate's control one.

The public app serves the page, the login, `/direct-stream`, the JWKS and the baseline. It listens
only on a unix socket that the gate relays to, which is why `Host` and `X-Forwarded-Proto` are taken
as the browser sent them. The control app, on a second socket, hands the gate the JWKS and the
revocations. Both read one `BrokerCore`, the in-memory state of this process.

This module holds the routes only. Beside it: `core` (the state), `access` (login, session, origin,
rate limit), `baseline` (the chat through the gate's private socket), `gate_link` (the gate's
health), `responses` (bodies, refusal handlers, the envelope middleware) and `static` (the page).
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import time
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.access import (
    LOGIN_PAGE,
    caller_or_none,
    check_cookie_origin,
    end_session,
    grant_origin,
    login,
    rate_limit,
    request_scheme,
    require_caller,
    session_cookie,
    wants_html,
)
from broker.baseline import autoload_option, baseline, baseline_model
from broker.core import BrokerCore
from broker.models import fleet_listing, listing
from broker.negotiation import negotiate
from broker.negotiation_options import Options
from broker.responses import (
    NO_STORE,
    Envelope,
    install_error_handlers,
    json_response,
)
from broker.sessions import COOKIE_NAME
from broker.settings import BrokerSettings, direct_stream_enabled
from broker.signing_keys import KeyRing
from broker.static import UNBUILT_PAGE, static_file
from llama_direct.control import (
    HOLD_SECONDS,
    LOADS_PATH,
    STATE_PATH,
    parse_load_charge,
    state_document,
)
from llama_direct.refusals import (
    BAD_LOAD_CHARGE,
    BAD_TOOL_INPUT,
    BODY_TOO_LARGE,
    LOGIN_REQUIRED,
    RequestRefusal,
)

MAX_CHAT_BODY_BYTES = 32 * 1024 * 1024
"""Images arrive inline as base64; the gate applies the real limit, this one only bounds memory here."""
MAX_SMALL_BODY_BYTES = 64 * 1024


def create_app(
    settings: BrokerSettings, access_token: str, *, keyring: KeyRing | None = None,
    clock: Callable[[], float] = time.time, core: BrokerCore | None = None,
    gate_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The public app. A given `keyring` must be loaded; `gate_transport` replaces the gate's socket."""
    if core is None:
        core = BrokerCore(settings, access_token, keyring=keyring, clock=clock, gate_transport=gate_transport)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await core.gate.start()
        try:
            yield
        finally:
            await core.gate.stop()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.core = core
    install_error_handlers(app)
    app.add_middleware(Envelope)

    @app.get("/")
    async def index(request: Request) -> Response:
        if "token" in request.query_params:
            return login(core, request)
        if caller_or_none(core, request) is None:
            if wants_html(request):
                return Response(LOGIN_PAGE, status_code=401, media_type="text/html", headers=NO_STORE)
            raise RequestRefusal(LOGIN_REQUIRED)
        page = static_file("index.html")
        headers = {"Cache-Control": "no-cache"}
        if page is None:
            return Response(UNBUILT_PAGE, media_type="text/html", headers=headers)
        return Response(page, media_type="text/html", headers=headers)

    @app.api_route("/direct-stream", methods=["GET", "POST"])
    async def direct_stream(request: Request) -> Response:
        caller = require_caller(core, request)
        origin = grant_origin(core, request, caller)
        if request.method == "GET":
            options = Options.from_query(request.query_params.multi_items())
        else:
            options = Options.from_body(await read_body(request, MAX_SMALL_BODY_BYTES))
        now = core.clock()
        rate_limit(core, caller.user, now)
        health = await core.gate.fresh()
        scheme = request_scheme(request)
        answer = negotiate(
            options,
            user=caller.user,
            origin=origin,
            url=core.policy.lane_url(scheme, request.headers.get("host", "")),
            policy=core.policy,
            health=health,
            allowed=core.allowed_models(health),
            enabled=direct_stream_enabled(),
            conversations=core.conversations,
            issuer=core.issuer(),
            now=core.mint_time(caller.user, now),
        )
        # The conversation's id in a header too: an HAProxy at the edge pins it to this machine from
        # there (a stick table stores a header reliably; a body may arrive after the rules ran).
        conversation = answer.get("conversation_id")
        headers = {**NO_STORE, "X-Conversation-Id": conversation} if isinstance(conversation, str) else NO_STORE
        return json_response(answer, headers=headers)

    @app.post("/direct-stream/revoke")
    async def revoke(request: Request) -> Response:
        caller = require_caller(core, request)
        check_cookie_origin(core, request, caller)
        not_before = core.revoke(caller.user)
        return json_response({"revoked": True, "not_before": not_before}, headers=NO_STORE)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        caller = require_caller(core, request)
        check_cookie_origin(core, request, caller)
        end_session(core, caller.session_id or request.cookies.get(COOKIE_NAME))
        core.revoke(caller.user)
        response = json_response({"logged_out": True}, headers=NO_STORE)
        response.headers["Set-Cookie"] = session_cookie(core, request, "", max_age=0)
        return response

    @app.get("/.well-known/jwks.json")
    async def jwks() -> Response:
        return json_response(core.keyring.jwks(core.clock()), headers={"Cache-Control": "no-cache"})

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        require_caller(core, request)
        health = await core.gate.fresh()
        if core.fleet_models is not None:
            answer = fleet_listing(core.own_models(health), core.fleet_models.others(core.clock()))
            return json_response(answer, headers=NO_STORE)
        return json_response(listing(core.own_models(health)), headers=NO_STORE)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        caller = require_caller(core, request)
        check_cookie_origin(core, request, caller)
        now = core.clock()
        rate_limit(core, caller.user, now)
        autoload = autoload_option(request.query_params.getlist("autoload"))
        body = await read_body(request, MAX_CHAT_BODY_BYTES)
        health = await core.gate.fresh()
        model = baseline_model(core, body, health)
        return await baseline(core, caller.user, body, request.headers.get("content-type"), model=model,
                              autoload=autoload)

    @app.post("/tools/echo")
    async def echo(request: Request) -> Response:
        caller = require_caller(core, request)
        check_cookie_origin(core, request, caller)
        try:
            raw = json.loads(await read_body(request, MAX_SMALL_BODY_BYTES))
        except (ValueError, RecursionError):
            raw = None
        if not isinstance(raw, dict) or raw.keys() != {"text"} or not isinstance(raw["text"], str):
            raise RequestRefusal(BAD_TOOL_INPUT)
        return json_response({"result": raw["text"]})

    @app.get("/{name:path}")
    async def static(name: str) -> Response:
        data = static_file(name) if name != "index.html" else None
        if data is None:
            raise StarletteHTTPException(404)
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return app


def create_control_app(core: BrokerCore) -> FastAPI:
    """The gate's side door: the JWKS and the revocations, long-polled (`/state`); never the signing key."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(Envelope, access_log=False)

    @app.get("/jwks")
    async def jwks() -> Response:
        return json_response(core.keyring.jwks(core.clock()), headers=NO_STORE)

    @app.get(STATE_PATH)
    async def state(known: str = "") -> Response:
        """Both documents when they differ from `known`; else held until they change, or 304 (llama_direct.control)."""
        deadline = time.monotonic() + HOLD_SECONDS
        while True:
            now = core.clock()
            core.revocations.prune(now)
            document = state_document(core.keyring.jwks(now), core.revocations.to_dict())
            left = deadline - time.monotonic()
            if document["version"] != known:
                return json_response(document, headers=NO_STORE)
            if left <= 0 or core.stopping:
                return Response(status_code=304, headers=NO_STORE)
            await core.wait_for_change(left)

    @app.post(LOADS_PATH)
    async def loads(request: Request) -> Response:
        """The gate charges a load to the user whose request causes it (llama_direct.control)."""
        try:
            charge = parse_load_charge(json.loads(await read_body(request, MAX_SMALL_BODY_BYTES)))
        except (ValueError, RecursionError):
            charge = None
        if charge is None:
            raise RequestRefusal(BAD_LOAD_CHARGE)
        core.charge_load(*charge, core.clock())
        return Response(status_code=204, headers=NO_STORE)

    @app.get("/revocations")
    async def revocations() -> Response:
        """Exactly what `Revocations.from_dict` reads on the gate's side."""
        core.revocations.prune(core.clock())
        return json_response(core.revocations.to_dict(), headers=NO_STORE)

    @app.get("/health")
    async def health() -> Response:
        """``lane_ready`` is what negotiation would say now: serve prints its ready line only then."""
        gate = await core.gate.fresh()
        return json_response({"broker": "ok", "lane_ready": gate.up and gate.model_ready}, headers=NO_STORE)

    return app


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestRefusal(BODY_TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRefusal(BODY_TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)
