"""The broker's two FastAPI apps: the public one the gate relays to, and the gate's control one.

The public app serves the page, the login, `/direct-stream`, the JWKS and the baseline. It listens
only on a unix socket that the gate relays to, which is why `Host` and `X-Forwarded-Proto` are taken
as the browser sent them. The control app, on a second socket, hands the gate the JWKS and the
revocations. Both read one `BrokerCore`, the in-memory state of this process.

The public app is `broker.mount`'s routes (negotiation, JWKS, models, baselines), the same ones a
host app mounts, with this broker's own login as the "who", plus the routes only the standalone
broker serves: the login, the page, the logout, the owner's model unload (`unload`) and the demo tool.
Beside it: `core` (the state), `access` (login, session, origin, rate limit), `baseline` (a lane request
through the gate's private socket), `gate_link` (the gate's health), `responses` (bodies, refusal handlers, the envelope
middleware) and `static` (the page).
"""

from __future__ import annotations

import asyncio
import mimetypes
import time
from collections.abc import Callable

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.access import (
    LOGIN_PAGE,
    Caller,
    caller_or_none,
    end_session,
    grant_origin,
    login,
    session_cookie,
    wants_html,
)
from broker.bodies import MAX_SMALL_BODY_BYTES, read_body, read_document
from broker.budget import settle
from broker.core import BrokerCore
from broker.metrics import METRICS
from broker.mount import Front, broker_router
from broker.responses import (
    NO_STORE,
    Envelope,
    install_error_handlers,
    json_response,
)
from broker.sessions import COOKIE_NAME
from broker.settings import BrokerSettings, direct_stream_enabled
from broker.signing_keys import KeyRing
from broker.static import LOGIN_FILE, PAGE_CSP, UNBUILT_PAGE, page_for, static_file
from broker.unload import may_unload, unload
from llama_direct.control import (
    HOLD_SECONDS,
    LOADS_PATH,
    MAX_USAGE_BODY_BYTES,
    REVOKED_PATH,
    STATE_PATH,
    USAGE_PATH,
    USERS_CHANGED_PATH,
    parse_load_charge,
    parse_revocation,
    parse_usage_batch,
    state_document,
)
from llama_direct.lanes import MODEL_UNLOAD_PATH
from llama_direct.metrics import METRICS_PATH
from llama_direct.refusals import (
    BAD_LOAD_CHARGE,
    BAD_REVOCATION,
    BAD_TOOL_INPUT,
    BAD_USAGE_REPORT,
    LOGIN_REQUIRED,
    RequestRefusal,
)


def create_app(
    settings: BrokerSettings, access_token: str, *, keyring: KeyRing | None = None,
    clock: Callable[[], float] = time.time, core: BrokerCore | None = None,
    gate_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The public app: the mounted broker (`broker.mount`) with the broker's own login as its "who",
    and the page. A given `keyring` must be loaded; `gate_transport` replaces the gate's socket."""
    if core is None:
        core = BrokerCore(settings, access_token, keyring=keyring, clock=clock, gate_transport=gate_transport)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.core = core
    install_error_handlers(app)
    app.add_middleware(Envelope)

    async def identify(request: Request) -> Caller | None:
        return caller_or_none(core, request)

    front = Front(identify=identify, allowed_origins=core.allowed_origins, lane_url=None,
                  enabled=direct_stream_enabled, may_unload=may_unload)
    app.include_router(broker_router(core, front))
    _add_own_routes(app, core, front)
    return app


def _add_own_routes(app: FastAPI, core: BrokerCore, front: Front) -> None:
    """What only the standalone broker serves: its login, its page and its demo tool."""

    @app.get("/")
    async def index(request: Request) -> Response:
        if "token" in request.query_params:
            return login(core, request)
        caller = caller_or_none(core, request)
        if caller is None:
            if wants_html(request):
                login_page = static_file(LOGIN_FILE) or LOGIN_PAGE.encode()
                return Response(login_page, status_code=401, media_type="text/html",
                                headers={**NO_STORE, "Content-Security-Policy": PAGE_CSP})
            raise RequestRefusal(LOGIN_REQUIRED)
        page = static_file("index.html")
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP}
        if page is None:
            return Response(UNBUILT_PAGE, media_type="text/html", headers=headers)
        return Response(page_for(page, caller.user), media_type="text/html", headers=headers)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        caller = await front.caller(request)
        grant_origin(core, request, caller, front.allowed_origins)
        end_session(core, caller.session_id or request.cookies.get(COOKIE_NAME))
        await core.arevoke(caller.user)
        response = json_response({"logged_out": True}, headers=NO_STORE)
        response.headers["Set-Cookie"] = session_cookie(core, request, "", max_age=0)
        return response

    @app.post(MODEL_UNLOAD_PATH)
    async def unload_model(request: Request) -> Response:
        """The owner unloads a router's model (`broker.unload`); the page polls `/v1/models` after."""
        caller = await front.caller(request)
        grant_origin(core, request, caller, front.allowed_origins)
        return json_response(await unload(core, caller, await read_body(request, MAX_SMALL_BODY_BYTES)),
                             headers=NO_STORE)

    @app.post("/tools/echo")
    async def echo(request: Request) -> Response:
        caller = await front.caller(request)
        grant_origin(core, request, caller, front.allowed_origins)
        return json_response({"result": await read_document(request, _echo_text, BAD_TOOL_INPUT)})

    @app.get("/{name:path}")
    async def static(name: str) -> Response:
        data = static_file(name) if name != "index.html" else None
        if data is None:
            raise StarletteHTTPException(404)
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-cache"})


def _echo_text(document: object) -> str | None:
    """The echo tool's input, `{"text": "..."}`."""
    if isinstance(document, dict) and document.keys() == {"text"} and isinstance(document["text"], str):
        return document["text"]
    return None


def create_control_app(core: BrokerCore) -> FastAPI:
    """The gate's side door: the JWKS and the revocations, long-polled (`/state`); never the signing key."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(Envelope, access_log=False)

    @app.get("/jwks")
    async def jwks() -> Response:
        return json_response(core.keyring.jwks(core.clock()), headers=NO_STORE)

    @app.get(METRICS_PATH)
    async def metrics() -> Response:
        """The broker's metrics, for the gate to append to its own (`llama_direct.metrics`)."""
        return Response(METRICS.render(), media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)

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
        charge = await read_document(request, parse_load_charge, BAD_LOAD_CHARGE)
        core.charge_load(*charge, core.clock())
        return Response(status_code=204, headers=NO_STORE)

    @app.post(USAGE_PATH)
    async def usage(request: Request) -> Response:
        """The gate reports streams' starts and ends: their reservations held or settled, the ledger written."""
        reports = await read_document(request, parse_usage_batch, BAD_USAGE_REPORT, MAX_USAGE_BODY_BYTES)
        await asyncio.to_thread(settle, core, reports)  # store writes (SQLite's commit, Redis): off the loop
        return Response(status_code=204, headers=NO_STORE)

    @app.post(USERS_CHANGED_PATH)
    async def users_changed() -> Response:
        """`llama-direct users` removed or rotated a user: their grants are refused on the gate now."""
        core.apply_user_revocations()
        return Response(status_code=204, headers=NO_STORE)

    @app.post(REVOKED_PATH)
    async def revoked(request: Request) -> Response:
        """A host app's broker beside this lane recorded a revocation: the gate must refuse it too."""
        core.record_revocation(*await read_document(request, parse_revocation, BAD_REVOCATION))
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
