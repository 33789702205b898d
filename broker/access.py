"""Who is asking: the login, the session cookie, the access token or a trusted proxy's user header, the
origin check and the rate limit."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response

from broker.accounts import header_user, session_user, user_for_secret
from broker.core import BrokerCore
from broker.responses import (
    NO_STORE,
)
from broker.session_file import SESSION_LIFETIME
from broker.sessions import COOKIE_NAME
from broker.settings import normalise_origin
from llama_direct.redaction import forget_secret, register_secret
from llama_direct.refusals import (
    BAD_ACCESS_TOKEN,
    ORIGIN_NOT_ALLOWED,
    RateLimited,
    RequestRefusal,
)
from llama_direct.users import Limits, User, parse_session_subject, session_subject

logger = logging.getLogger(__name__)


LOGIN_PAGE = (
    "<!doctype html><meta charset=utf-8><title>llama-direct: log in</title>"
    "<p>Log in first: open the login link that llama-direct printed when it started.</p>"
)
BAD_LOGIN_PAGE = (
    "<!doctype html><meta charset=utf-8><title>llama-direct: log in</title>"
    "<p>That login link is not valid. Use the one llama-direct printed when it started.</p>"
)


@dataclass(frozen=True)
class Caller:
    user: str
    """The `sub` of the caller's grants: `OWNER` for the access token, a user's stable id, or a host's user."""
    session_id: str | None = None
    """Set when the broker's own session cookie identified the caller."""
    ambient: bool = True
    """Whether a browser may have sent the credential on its own (a cookie, or a host app's auth the
    broker cannot see into), so a cross-site page could have caused the request: `grant_origin`
    checks its `Origin` then. Only a bearer access token, which a page must set itself, is not."""
    name: str | None = None
    """A named user's name (`llama-direct users`); None for the owner and a host app's users."""
    limits: Limits | None = None
    """A named user's limits; None: none (the owner, a host app's users)."""

    @classmethod
    def named(cls, user: User, *, session_id: str | None = None, ambient: bool = True) -> Caller:
        return cls(user=user.id, session_id=session_id, ambient=ambient, name=user.name, limits=user.limits)


def login(core: BrokerCore, request: Request) -> Response:
    """Trade the access token for a session, then send the browser on, so the token leaves the address bar."""
    token = request.query_params.get("token")
    user = core.access.user_for(token)
    if user is None and token:
        named = user_for_secret(core.users, token, login=True)
        user = session_subject(named) if named is not None else None
    if user is None:
        failed_login(core, request)
        if wants_html(request):
            return Response(BAD_LOGIN_PAGE, status_code=401, media_type="text/html", headers=NO_STORE)
        raise RequestRefusal(BAD_ACCESS_TOKEN)
    end_session(core, request.cookies.get(COOKIE_NAME))
    session_id = core.sessions.create(user)
    register_secret(session_id, ephemeral=True)
    logger.info("event=login user=%s", user)
    headers = {
        "Location": "./",
        "Cache-Control": "no-store",
        "Set-Cookie": session_cookie(core, request, session_id, max_age=SESSION_LIFETIME),
    }
    return Response(status_code=303, headers=headers)


def end_session(core: BrokerCore, session_id: str | None) -> None:
    """The session is gone on the server's side: its cookie, replayed, names nobody."""
    if session_id:
        core.sessions.drop(session_id)
        forget_secret(session_id)


def session_cookie(core: BrokerCore, request: Request, value: str, *, max_age: int | None = None) -> str:
    """Scoped to the public path, and `Secure` whenever the browser's side is TLS.

    Behind a TLS reverse proxy (`--public-url https://host/llm`) the gate's own listener is plain, so
    the public URL decides; without one, the scheme the gate saw does.
    """
    public = urlsplit(core.settings.public_url) if core.settings.public_url else None
    secure = (public.scheme if public else request_scheme(request)) == "https"
    path = core.settings.public_prefix or "/"
    parts = [f"{COOKIE_NAME}={value}", "HttpOnly", "SameSite=Strict", f"Path={path}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def caller_or_none(core: BrokerCore, request: Request) -> Caller | None:
    """The bearer token when one is sent (the owner's access token, a user's login token or API key; a
    wrong one is refused, not ignored, unless a trusted proxy names the user), else the session cookie
    (the owner's, or a user's while that user exists at the generation the session was made for), else
    the user a trusted proxy names (`header_user`): llama-direct's own credentials first, since the
    caller chose them; the proxy's header names who presents none. Header users are never the owner."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        bearer = scheme.lower() == "bearer"
        user = core.access.user_for(value.strip()) if bearer else None
        if user is not None:
            return Caller(user=user, ambient=False)
        named = user_for_secret(core.users, value.strip(), login=False) if bearer else None
        if named is not None:
            return Caller.named(named, ambient=False)
        proxied = header_user(core.users, request.headers, core.settings.header_users, core.clock())
        if proxied is None:
            failed_login(core, request)
            raise RequestRefusal(BAD_ACCESS_TOKEN)
        return Caller.named(proxied)
    session_id = request.cookies.get(COOKIE_NAME)
    user = core.sessions.user_for(session_id)
    if user is None:
        proxied = header_user(core.users, request.headers, core.settings.header_users, core.clock())
        return Caller.named(proxied) if proxied is not None else None
    if parse_session_subject(user) is None:  # the owner's, or another access token's subject
        return Caller(user=user, session_id=session_id)
    named = session_user(core.users, user)
    return Caller.named(named, session_id=session_id) if named is not None else None


def grant_origin(core: BrokerCore, request: Request, caller: Caller, allowed: frozenset[str]) -> str | None:
    """The origin the token will be bound to.

    An ambient caller's request must come from the app itself or an `allowed` origin (normalised).
    Browsers send no `Origin` on a same-origin GET; then `Sec-Fetch-Site: same-origin` names the
    page's own origin, which the lane request will carry.
    """
    origin = request.headers.get("origin")
    if not caller.ambient:
        return origin
    app_origin = core.policy.app_origin(request_scheme(request), request.headers.get("host", ""))
    if origin is None:
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site == "same-origin":
            return app_origin
        if fetch_site not in (None, "none"):
            raise RequestRefusal(ORIGIN_NOT_ALLOWED)
        return None
    normalised = normalise_origin(origin)
    if normalised is None or (normalised != app_origin and normalised not in allowed):
        raise RequestRefusal(ORIGIN_NOT_ALLOWED)
    return origin


def failed_login(core: BrokerCore, request: Request) -> None:
    """Count a wrong access token against the client's address; 429 once its allowance is spent.

    Only failures are counted and a right token is checked first, so someone sharing the address
    (a NAT, a proxy) can slow their own guessing but never lock the real user out.
    """
    retry_after = core.login_failures.acquire(client_address(request), core.clock())
    if retry_after:
        logger.warning("event=login_failures_limited retry_after=%d", retry_after)
        raise RateLimited(retry_after)


def client_address(request: Request) -> str:
    """The gate names the client in `X-Forwarded-For` (its own resolution, one entry); else the socket's peer."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()[:64]
    return request.client.host if request.client else "unknown"


def rate_limit(core: BrokerCore, user: str, now: float) -> None:
    retry_after = core.limiter.acquire(user, now)
    if retry_after:
        raise RateLimited(retry_after)


def request_scheme(request: Request) -> str:
    """The scheme the browser used: the gate says so in `X-Forwarded-Proto`, trusted on this socket."""
    forwarded = request.headers.get("x-forwarded-proto")
    if forwarded is not None:
        scheme = forwarded.split(",", 1)[0].strip().lower()
        if scheme in ("http", "https"):
            return scheme
    return request.url.scheme


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")
