"""The broker's two FastAPI apps: the public one the gate relays to, and the gate's control one.

The public app serves the page, the login, `/direct-stream`, the JWKS and the baseline. It listens
only on a unix socket that the gate relays to, which is why `Host` and `X-Forwarded-Proto` are taken
as the browser sent them. The control app, on a second socket, hands the gate the JWKS and the
revocations. Both read one `BrokerCore`, the in-memory state of this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import mimetypes
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.ids import Ids, load_or_create_ids
from broker.negotiation import (
    CHAT_ROUTE,
    GATE_DOWN,
    LANE_PREFIX,
    Conversations,
    GateHealth,
    Issuer,
    Options,
    Policy,
    negotiate,
)
from broker.refusals import Refusal, RequestRefusal
from broker.replay import Revocations
from broker.sessions import COOKIE_NAME, AccessTokens, RateLimiter, SessionStore
from broker.settings import BrokerSettings, SettingsError, direct_stream_enabled, normalise_origin
from broker.signing_keys import KeyFileError, KeyRing
from broker.tokens import Grant, mint
from llama_launcher.redaction import register_secret

logger = logging.getLogger("broker")

HEALTH_INTERVAL_SECONDS = 0.5
HEALTH_TIMEOUT_SECONDS = 1.0
MAX_CHAT_BODY_BYTES = 32 * 1024 * 1024
"""Images arrive inline as base64; the gate applies the real limit, this one only bounds memory here."""
MAX_SMALL_BODY_BYTES = 64 * 1024
STATIC_PACKAGE = "broker"
STATIC_DIR = "static"

NO_STORE = {"Cache-Control": "no-store"}
JSON_TYPE = "application/json"


class LoginRequired(Refusal):
    status = 401
    code = "login_required"
    message = "Log in first: open the login link that llama-direct printed when it started."


class BadAccessToken(Refusal):
    status = 401
    code = "bad_access_token"
    message = "The access token is not valid."


class OriginNotAllowed(Refusal):
    status = 403
    code = "origin_not_allowed"
    message = "Requests from this origin may not use this session."


class RateLimited(Refusal):
    status = 429
    code = "rate_limited"
    message = "Too many requests: wait a moment, then try again."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after


class BodyTooLarge(Refusal):
    status = 413
    code = "body_too_large"
    message = "The request body is too large."


class GateUnavailable(Refusal):
    status = 503
    code = "gate_unavailable"
    message = "The gate is not answering; try again in a moment."


BAD_TOOL_INPUT_MESSAGE = 'The echo tool takes {"text": "..."}.'
INTERNAL_ERROR_MESSAGE = "Internal error."
HTTP_MESSAGES = {404: "Not found.", 405: "Method not allowed."}

_UNBUILT_PAGE = (
    "<!doctype html><meta charset=utf-8><title>llama-direct</title>"
    "<p>The page has not been built yet: run <code>npm run build</code> in <code>frontend/</code>.</p>"
)
_LOGIN_PAGE = (
    "<!doctype html><meta charset=utf-8><title>llama-direct: log in</title>"
    "<p>Log in first: open the login link that llama-direct printed when it started.</p>"
)
_BAD_LOGIN_PAGE = (
    "<!doctype html><meta charset=utf-8><title>llama-direct: log in</title>"
    "<p>That login link is not valid. Use the one llama-direct printed when it started.</p>"
)


class _ServerError(Refusal):
    """An error with a status of its own, for the answers no refusal class names (404, 405, 500)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message


def _error_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
    """No error is worth caching: a refusal now may be an answer a moment later."""
    return Response(body, status_code=status, media_type=JSON_TYPE, headers={**NO_STORE, **(headers or {})})


class GateLink:
    """The broker's one door to the gate's private socket: the health poller and the baseline.

    A fresh connection per request: the gate may close a kept-alive connection after a stream, and
    a unix-socket connect costs microseconds.
    """

    def __init__(self, settings: BrokerSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.health: GateHealth = GATE_DOWN
        self._settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise GateUnavailable()
        return self._client

    async def start(self) -> None:
        transport = self._transport or httpx.AsyncHTTPTransport(
            uds=str(self._settings.gate_socket), limits=httpx.Limits(max_keepalive_connections=0)
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            base_url="http://gate",
            timeout=httpx.Timeout(connect=2.0, read=None, write=30.0, pool=5.0),
        )
        await self.poll_once()
        self._poller = asyncio.create_task(self._poll_forever(), name="gate-health")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def poll_once(self) -> None:
        try:
            answer = await self.client.get("/health", timeout=HEALTH_TIMEOUT_SECONDS)
            health = GateHealth.from_answer(answer.json()) if answer.status_code == 200 else GATE_DOWN
        except (httpx.HTTPError, ValueError):
            health = GATE_DOWN
        if health.up != self.health.up or health.model_ready != self.health.model_ready:
            logger.info("event=gate_health gate_up=%s model_ready=%s", health.up, health.model_ready)
        self.health = health

    async def _poll_forever(self) -> None:
        """Never stops on a surprise: a poller that died would leave a stale answer in place for good."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_SECONDS)
            try:
                await self.poll_once()
            except Exception as exc:
                logger.error("event=health_poll_failed error=%s", type(exc).__name__)
                self.health = GATE_DOWN


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


class BrokerCore:
    """This process's state, shared by the public and the control app."""

    def __init__(
        self,
        settings: BrokerSettings,
        access_token: str,
        *,
        keyring: KeyRing | None = None,
        clock: Callable[[], float] = time.time,
        ids: Ids | None = None,
        gate_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        register_secret(access_token)
        self.settings = settings
        self.clock = clock
        self.access = AccessTokens.single(access_token)
        self.sessions = SessionStore()
        self.limiter = RateLimiter(settings.rate_per_minute, settings.burst)
        self.revocations = Revocations()
        self.policy = Policy.from_settings(settings)
        self.ids = ids or load_or_create_ids(settings.data_dir)
        if keyring is None:
            keyring = _keyring(settings, clock())
        self.keyring = keyring
        self.gate = GateLink(settings, gate_transport)
        self.allowed_origins = frozenset(
            origin for origin in (normalise_origin(o) for o in settings.allowed_origins) if origin
        )
        self.conversations = Conversations()
        logger.info(
            "event=broker_configured algorithm=%s direct_stream=%s model=%s",
            keyring.current.algorithm, direct_stream_enabled(), settings.model,
        )

    def issuer(self) -> Issuer:
        """Minting is what moves the rotation schedule on: a successor is staged, then signs once published."""
        key = self.keyring.advance(self.clock(), self.settings.key_max_age)
        return Issuer(key=key, issuer=self.ids.broker_id, audience=self.ids.gate_id)

    def mint_time(self, user: str, now: float) -> float:
        """`now`, or the user's revocation second when that is later, so a new token is not born revoked.

        `iat` is a whole second and a revocation refuses every `iat` below its second, which is the
        one after the revocation; the gate's leeway lets such a token start at once.
        """
        not_before = self.revocations.to_dict()["not_before"].get(user)
        return max(now, not_before) if not_before is not None else now

    def revoke(self, user: str) -> int:
        now = self.clock()
        not_before = math.floor(now) + 1
        self.revocations.prune(now)
        self.revocations.revoke(user, not_before)
        logger.info("event=revoked user=%s not_before=%d", user, not_before)
        return not_before


@dataclass(frozen=True)
class Caller:
    user: str
    session_id: str | None
    """Set when the session cookie (not a bearer token) identified the caller."""

    @property
    def via_cookie(self) -> bool:
        return self.session_id is not None


def create_app(
    settings: BrokerSettings,
    access_token: str,
    *,
    keyring: KeyRing | None = None,
    clock: Callable[[], float] = time.time,
    core: BrokerCore | None = None,
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
    _install_error_handlers(app)
    app.add_middleware(Envelope)

    @app.get("/")
    async def index(request: Request) -> Response:
        if "token" in request.query_params:
            return _login(core, request)
        if _caller_or_none(core, request) is None:
            if _wants_html(request):
                return Response(_LOGIN_PAGE, status_code=401, media_type="text/html", headers=NO_STORE)
            raise LoginRequired()
        page = _static_file("index.html")
        headers = {"Cache-Control": "no-cache"}
        if page is None:
            return Response(_UNBUILT_PAGE, media_type="text/html", headers=headers)
        return Response(page, media_type="text/html", headers=headers)

    @app.api_route("/direct-stream", methods=["GET", "POST"])
    async def direct_stream(request: Request) -> Response:
        caller = _require_caller(core, request)
        origin = _grant_origin(core, request, caller)
        if request.method == "GET":
            options = Options.from_query(request.query_params.multi_items())
        else:
            options = Options.from_body(await _read_body(request, MAX_SMALL_BODY_BYTES))
        now = core.clock()
        _rate_limit(core, caller.user, now)
        scheme = _scheme(request)
        answer = negotiate(
            options,
            user=caller.user,
            origin=origin,
            url=core.policy.lane_url(scheme, request.headers.get("host", "")),
            policy=core.policy,
            health=core.gate.health,
            enabled=direct_stream_enabled(),
            conversations=core.conversations,
            issuer=core.issuer(),
            now=core.mint_time(caller.user, now),
        )
        return _json(answer, headers=NO_STORE)

    @app.post("/direct-stream/revoke")
    async def revoke(request: Request) -> Response:
        caller = _require_caller(core, request)
        _check_cookie_origin(core, request, caller)
        not_before = core.revoke(caller.user)
        return _json({"revoked": True, "not_before": not_before}, headers=NO_STORE)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        caller = _require_caller(core, request)
        _check_cookie_origin(core, request, caller)
        core.sessions.drop(caller.session_id)
        core.revoke(caller.user)
        response = _json({"logged_out": True}, headers=NO_STORE)
        response.headers["Set-Cookie"] = _cookie("", secure=_scheme(request) == "https", max_age=0)
        return response

    @app.get("/.well-known/jwks.json")
    async def jwks() -> Response:
        return _json(core.keyring.jwks(core.clock()), headers={"Cache-Control": "no-cache"})

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        _require_caller(core, request)
        model = {"id": core.settings.model, "object": "model", "created": 0, "owned_by": "llama-direct"}
        return _json({"object": "list", "data": [model]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        caller = _require_caller(core, request)
        _check_cookie_origin(core, request, caller)
        _rate_limit(core, caller.user, core.clock())
        body = await _read_body(request, MAX_CHAT_BODY_BYTES)
        return await _baseline(core, caller.user, body, request.headers.get("content-type"))

    @app.post("/tools/echo")
    async def echo(request: Request) -> Response:
        caller = _require_caller(core, request)
        _check_cookie_origin(core, request, caller)
        try:
            raw = json.loads(await _read_body(request, MAX_SMALL_BODY_BYTES))
        except (ValueError, RecursionError):
            raw = None
        if not isinstance(raw, dict) or raw.keys() != {"text"} or not isinstance(raw["text"], str):
            raise RequestRefusal(400, "bad_tool_input", BAD_TOOL_INPUT_MESSAGE)
        return _json({"result": raw["text"]})

    @app.get("/{name:path}")
    async def static(name: str) -> Response:
        data = _static_file(name) if name != "index.html" else None
        if data is None:
            raise StarletteHTTPException(404)
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return app


def create_control_app(core: BrokerCore) -> FastAPI:
    """The gate's side door: the JWKS and the revocations it pulls every 0.5 s; never the signing key."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)
    app.add_middleware(Envelope, access_log=False)

    @app.get("/jwks")
    async def jwks() -> Response:
        return _json(core.keyring.jwks(core.clock()), headers=NO_STORE)

    @app.get("/revocations")
    async def revocations() -> Response:
        """Exactly what `Revocations.from_dict` reads on the gate's side."""
        core.revocations.prune(core.clock())
        return _json(core.revocations.to_dict(), headers=NO_STORE)

    @app.get("/health")
    async def health() -> Response:
        """``lane_ready`` is what negotiation would say now: serve prints its ready line only then."""
        gate = core.gate.health
        return _json({"broker": "ok", "lane_ready": gate.up and gate.model_ready}, headers=NO_STORE)

    return app


class Envelope:
    """Outermost layer: `Referrer-Policy` on every answer, a generic 500 for anything unforeseen,
    and one structured log line per request with the path only, so a login token never reaches a log.
    """

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_policy(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"referrer-policy", b"no-referrer")]
            await send(message)

        try:
            await self.app(scope, receive, send_with_policy)
        except Exception as exc:
            logger.error("event=unhandled_error path=%s error=%s", scope["path"], type(exc).__name__)
            if status == 0:
                body = _ServerError(500, INTERNAL_ERROR_MESSAGE).to_body()
                await send_with_policy(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", JSON_TYPE.encode()), (b"content-length", b"%d" % len(body))],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            if self.access_log:
                logger.info(
                    "event=request method=%s path=%s status=%d ms=%.2f",
                    scope["method"], scope["path"], status, (time.perf_counter() - started) * 1000,
                )


def _install_error_handlers(app: FastAPI) -> None:
    async def on_refusal(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refusal)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        return _error_response(exc.status, exc.to_body(), headers)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        message = HTTP_MESSAGES.get(status, "The request was refused.")
        return _error_response(status, _ServerError(status, message).to_body(), exc.headers)

    app.add_exception_handler(Refusal, on_refusal)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def _login(core: BrokerCore, request: Request) -> Response:
    """Trade the access token for a session, then send the browser on, so the token leaves the address bar."""
    user = core.access.user_for(request.query_params.get("token"))
    if user is None:
        if _wants_html(request):
            return Response(_BAD_LOGIN_PAGE, status_code=401, media_type="text/html", headers=NO_STORE)
        raise BadAccessToken()
    core.sessions.drop(request.cookies.get(COOKIE_NAME))
    session_id = core.sessions.create(user)
    register_secret(session_id)
    logger.info("event=login user=%s", user)
    headers = {
        "Location": "./",
        "Cache-Control": "no-store",
        "Set-Cookie": _cookie(session_id, secure=_scheme(request) == "https"),
    }
    return Response(status_code=303, headers=headers)


def _cookie(value: str, *, secure: bool, max_age: int | None = None) -> str:
    parts = [f"{COOKIE_NAME}={value}", "HttpOnly", "SameSite=Strict", "Path=/"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def _caller_or_none(core: BrokerCore, request: Request) -> Caller | None:
    """The bearer access token when one is sent (a wrong one is refused, not ignored), else the cookie."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        user = core.access.user_for(value.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise BadAccessToken()
        return Caller(user=user, session_id=None)
    session_id = request.cookies.get(COOKIE_NAME)
    user = core.sessions.user_for(session_id)
    return Caller(user=user, session_id=session_id) if user is not None else None


def _require_caller(core: BrokerCore, request: Request) -> Caller:
    caller = _caller_or_none(core, request)
    if caller is None:
        raise LoginRequired()
    return caller


def _grant_origin(core: BrokerCore, request: Request, caller: Caller) -> str | None:
    """The origin the token will be bound to.

    A cookie-carrying request must come from the app itself or an allowed origin. Browsers send no
    `Origin` on a same-origin GET; then `Sec-Fetch-Site: same-origin` names the page's own origin,
    which the lane request will carry.
    """
    origin = request.headers.get("origin")
    if not caller.via_cookie:
        return origin
    app_origin = core.policy.app_origin(_scheme(request), request.headers.get("host", ""))
    if origin is None:
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site == "same-origin":
            return app_origin
        if fetch_site not in (None, "none"):
            raise OriginNotAllowed()
        return None
    normalised = normalise_origin(origin)
    if normalised is None or (normalised != app_origin and normalised not in core.allowed_origins):
        raise OriginNotAllowed()
    return origin


def _check_cookie_origin(core: BrokerCore, request: Request, caller: Caller) -> None:
    _grant_origin(core, request, caller)


def _rate_limit(core: BrokerCore, user: str, now: float) -> None:
    retry_after = core.limiter.acquire(user, now)
    if retry_after:
        raise RateLimited(retry_after)


def _scheme(request: Request) -> str:
    """The scheme the browser used: the gate says so in `X-Forwarded-Proto`, trusted on this socket."""
    forwarded = request.headers.get("x-forwarded-proto")
    if forwarded is not None:
        scheme = forwarded.split(",", 1)[0].strip().lower()
        if scheme in ("http", "https"):
            return scheme
    return request.url.scheme


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def _baseline(core: BrokerCore, user: str, body: bytes, content_type: str | None) -> Response:
    """The fallback: the same request through the gate's private side, with a token minted for it."""
    now = core.clock()
    issuer = core.issuer()
    minted = mint(
        issuer.key,
        issuer=issuer.issuer,
        audience=issuer.audience,
        subject=user,
        scope="chat",
        grant=Grant(routes=(CHAT_ROUTE,), model=core.settings.model, max_tokens=core.settings.max_tokens_cap),
        now=core.mint_time(user, now),
        ttl=core.settings.token_ttl,
    )
    client = core.gate.client
    request = client.build_request(
        "POST",
        LANE_PREFIX + CHAT_ROUTE[1],
        content=body,
        headers={"authorization": f"Bearer {minted.token}", "content-type": content_type or JSON_TYPE},
    )
    try:
        upstream = await client.send(request, stream=True)
    except httpx.HTTPError:
        raise GateUnavailable() from None
    headers = {"Cache-Control": "no-store"}
    upstream_type = upstream.headers.get("content-type")
    if upstream_type:
        headers["Content-Type"] = upstream_type
    return _RelayResponse(upstream, headers)


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
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        logger.warning("event=baseline_cut status=%d", upstream.status_code)


def _json(value: Any, *, headers: dict[str, str] | None = None, status: int = 200) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type=JSON_TYPE, headers=headers)


def _static_root() -> Traversable:
    return resources.files(STATIC_PACKAGE).joinpath(STATIC_DIR)


def _static_file(name: str) -> bytes | None:
    """A file of the built page, from package data so an installed wheel serves it; None when absent.

    Walked one plain segment at a time, so no `..`, hidden name or odd character can leave the folder.
    """
    segments = name.split("/")
    if not name or any(not _plain_segment(segment) for segment in segments):
        return None
    node = _static_root()
    for segment in segments:
        node = node.joinpath(segment)
    try:
        return node.read_bytes() if node.is_file() else None
    except OSError:
        return None


def _plain_segment(segment: str) -> bool:
    return (
        bool(segment)
        and not segment.startswith(".")
        and all(c.isascii() and (c.isalnum() or c in "-_.") for c in segment)
    )
