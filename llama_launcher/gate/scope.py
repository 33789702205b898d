"""The direct lane's request-head check: (head, claims) -> the one upstream target, or a refusal.

Pure: no sockets, no asyncio. The gate calls `check_request` once per request, after the token
verified and before any byte reaches llama-server. Everything here is a comparison against an
exact string; nothing is normalised, because a normaliser that disagrees with llama-server's (or
with a reverse proxy's) is how a path like `/direct/v1/%2e%2e/props` reaches a route no token
grants. So anything a normaliser could rewrite into a lane route is refused outright (400), and a
well-formed path that is not a lane route, `/V1/...` included, is simply not found (404).

The lane routes are fixed in `llama_direct.lanes`; a grant can only narrow them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from llama_direct.lanes import LANE_PATHS, LANE_PREFIX, LANE_ROUTES, ROUTE_AT, LaneRoute, never_routed
from llama_direct.refusals import (
    AMBIGUOUS_PATH,
    BAD_PREFLIGHT,
    BAD_QUERY,
    BAD_TARGET,
    CONVERSATION_MISMATCH,
    CONVERSATION_NOT_GRANTED,
    DUPLICATE_HEADER,
    METHOD_NOT_ALLOWED,
    MISSING_CONVERSATION_ID,
    NO_SUCH_ROUTE,
    ORIGIN_MISMATCH,
    ORIGIN_NOT_ALLOWED,
    ORIGIN_REQUIRED,
    ROUTE_NOT_GRANTED,
    SCOPE_MISMATCH,
    UNSUPPORTED_ENCODING,
    UNSUPPORTED_MEDIA_TYPE,
    RequestRefusal,
)
from llama_direct.tokens import Claims, Grant

_RFC9110_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
PREFLIGHT_METHODS = tuple(sorted({route.method for route in LANE_ROUTES}, key=_RFC9110_METHODS.index))
"""Every method some lane route takes, in RFC 9110's order (today GET, POST, DELETE)."""
PREFLIGHT_MAX_HEADERS = 32
PREFLIGHT_MAX_AGE = 600

_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_PERCENT_TRIPLET = re.compile(r"%([0-9A-Fa-f]{2})")
_DIGITS = re.compile(r"[0-9]{1,18}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An RFC 9110 token (section 5.6.2): what a header field name is."""
_SINGLE_HEADERS = (b"origin", b"x-conversation-id", b"content-type", b"content-encoding")


@dataclass(frozen=True)
class RequestHead:
    """What the gate knows of a request before its body: the parsed method, raw target and headers."""

    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Route:
    """Where an allowed request goes: the target llama-server receives, with the lane prefix gone.

    `lane` is the registry entry the request matched, which the shell asks what to do (shape a body,
    open or continue a conversation). `conversation_id` is the grant's, for the shell to send as
    `X-Conversation-Id` where the route opens one: the client's own header never travels on.
    """

    method: str
    upstream_target: str
    lane: LaneRoute
    conversation_id: str | None


Granted = tuple[LaneRoute, str, "str | None"]
"""A request's lane route read from its target under its grant (`granted_route`), with the path under
the lane and the raw query: read once a request, for both `metered_lane` and `check_request`."""


def granted_route(head: RequestHead, claims: Claims, lane_prefix: str = LANE_PREFIX) -> Granted | RequestRefusal:
    """The lane route the request's target asks for, where its grant has it; else the refusal it earns
    (`check_request` raises it first, so a request is refused for the same reason either way)."""
    try:
        path, query = _split_target(head.target)
        lane_path = _lane_path(path, lane_prefix)
        return _granted_route(head.method, lane_path, claims.grant), lane_path, query
    except RequestRefusal as refusal:
        return refusal


def check_request(head: RequestHead, claims: Claims, *, lane_prefix: str = LANE_PREFIX,
                  granted: Granted | RequestRefusal | None = None) -> Route:
    """The route this request may take under `claims`, or a `RequestRefusal` saying why not; `granted`:
    its `granted_route`, when already read."""
    if granted is None:
        granted = granted_route(head, claims, lane_prefix)
    if isinstance(granted, RequestRefusal):
        raise granted
    lane, lane_path, query = granted
    grant = claims.grant
    if lane.scope not in claims.scope.split():
        raise RequestRefusal(SCOPE_MISMATCH)
    headers = _single_headers(head.headers)
    _check_origin(head.method, headers, head.headers, grant)
    _check_conversation_header(lane, headers.get(b"x-conversation-id"), grant)
    if lane.body is not None:
        _check_json_body_headers(headers)
    if lane.continues_conversation:
        return Route(head.method, _conversation_target(lane, query, grant), lane, grant.conversation_id)
    if query is not None:
        raise RequestRefusal(BAD_QUERY)
    return Route(head.method, lane_path, lane, grant.conversation_id)


def metered_lane(granted: Granted | RequestRefusal, claims: Claims) -> LaneRoute | None:
    """The lane route a request whose grant was just spent is metered by, before `check_request` may
    refuse it: the request's (`granted_route`), where its grant has it; else the grant's own, where it
    names one (the broker's always do: the route it reserved for). So a refusal of the route settles the
    grant too."""
    if not isinstance(granted, RequestRefusal):
        return granted[0]
    routes = claims.grant.routes
    return ROUTE_AT.get(routes[0]) if len(routes) == 1 else None


def allowed_preflight(
    origin: str,
    allowed_origins: frozenset[str],
    requested_method: str | None,
    requested_headers: str | None,
    *,
    target: bytes,
    lane_prefix: str = "/direct",
) -> list[tuple[bytes, bytes]] | RequestRefusal:
    """The CORS headers for a preflight the gate answers itself in two-port mode, or the refusal.

    Only the app's own origins get an answer, and only for a method and path the lane serves, so a
    page on another origin cannot even learn what the lane would take. No credentials are allowed:
    the lane authenticates with a bearer token, never a cookie.

    Any request-header name is allowed (up to `PREFLIGHT_MAX_HEADERS`), because SDKs add their own
    (`x-stainless-*`) and a browser refuses the whole request if one is missing from the answer. That
    widens nothing: the token is the boundary, and the request forwarded to llama-server is built
    from an allow-list, so no client header reaches it beyond what the grant sets. The answer names
    exactly the names asked for, since `*` does not cover `Authorization`.
    """
    if origin not in allowed_origins:
        return RequestRefusal(ORIGIN_NOT_ALLOWED, "lane")
    if requested_method is None:
        return RequestRefusal(BAD_PREFLIGHT)
    if requested_method not in PREFLIGHT_METHODS:
        return RequestRefusal(METHOD_NOT_ALLOWED, "lane")
    try:
        path, _query = _split_target(target)
        lane_path = _lane_path(path, lane_prefix)
    except RequestRefusal as refusal:
        return refusal
    if lane_path not in LANE_PATHS:
        return _no_such_route()
    if (requested_method, lane_path) not in ROUTE_AT:
        return RequestRefusal(METHOD_NOT_ALLOWED, "path")
    names = preflight_header_names(requested_headers)
    if isinstance(names, RequestRefusal):
        return names
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", ", ".join(PREFLIGHT_METHODS).encode()),
    ]
    if names:
        headers.append((b"access-control-allow-headers", ", ".join(names).encode("ascii")))
    headers += [
        (b"access-control-max-age", str(PREFLIGHT_MAX_AGE).encode()),
        (b"vary", b"Origin, Access-Control-Request-Headers"),
    ]
    return headers


def preflight_header_names(requested_headers: str | None) -> list[str] | RequestRefusal:
    """The names in `Access-Control-Request-Headers`, as asked, or `bad_preflight`.

    Each must be an RFC 9110 token, so that echoing it back cannot split or inject a header; empty
    list elements are skipped, as RFC 9110 section 5.6.1 asks of a recipient.
    """
    names = [name.strip(" \t") for name in (requested_headers or "").split(",")]
    names = [name for name in names if name]
    if len(names) > PREFLIGHT_MAX_HEADERS:
        return RequestRefusal(BAD_PREFLIGHT, "too_many_headers", limit=PREFLIGHT_MAX_HEADERS)
    if not all(_TOKEN.fullmatch(name) for name in names):
        return RequestRefusal(BAD_PREFLIGHT, "header_names")
    return names


def _split_target(target: bytes) -> tuple[str, str | None]:
    """The path and the raw query (None when there is no `?` at all) of an origin-form target."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise RequestRefusal(BAD_TARGET, "ascii") from None
    if not text.startswith("/"):
        raise RequestRefusal(BAD_TARGET, "slash")
    if _CONTROL.search(text):
        raise RequestRefusal(BAD_TARGET, "control")
    if "#" in text:
        raise RequestRefusal(BAD_TARGET, "fragment")
    path, mark, query = text.partition("?")
    _check_unambiguous(path)
    return path, query if mark else None


def _check_unambiguous(path: str) -> None:
    """Refuse every spelling that some normaliser would turn into a different path."""
    if "\\" in path:
        raise RequestRefusal(AMBIGUOUS_PATH, "backslash")
    if _ENCODED_SEPARATOR.search(path):
        raise RequestRefusal(AMBIGUOUS_PATH, "encoded_separator")
    if "%" in path:
        raise RequestRefusal(AMBIGUOUS_PATH)
    if "//" in path:
        raise RequestRefusal(AMBIGUOUS_PATH, "empty_segment")
    segments = path.split("/")
    if "." in segments or ".." in segments:
        raise RequestRefusal(AMBIGUOUS_PATH, "dot_segment")
    if len(path) > 1 and path.endswith("/"):
        raise RequestRefusal(AMBIGUOUS_PATH, "trailing_slash")


def _no_such_route() -> RequestRefusal:
    return RequestRefusal(NO_SUCH_ROUTE)


def _lane_path(path: str, lane_prefix: str) -> str:
    if not path.startswith(lane_prefix + "/"):
        raise _no_such_route()
    return path[len(lane_prefix) :]


def _granted_route(method: str, lane_path: str, grant: Grant) -> LaneRoute:
    """The registry entry of (method, path) when both the lane and the grant have it; another lane
    route is 403 `route_not_granted`, a granted path with another method 405, anything else 404."""
    if never_routed(lane_path):
        raise _no_such_route()
    key = (method, lane_path)
    entry = ROUTE_AT.get(key)
    if entry is not None:
        if key in grant.routes:
            return entry
        raise RequestRefusal(ROUTE_NOT_GRANTED)  # a lane route, but this token was granted for another
    methods = sorted({m for m, p in grant.routes if p == lane_path and (m, p) in ROUTE_AT})
    if methods:
        allowed = " or ".join(methods)
        raise RequestRefusal(METHOD_NOT_ALLOWED, "token", allowed=allowed)
    raise _no_such_route()


def _single_headers(headers: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The headers this check reads, each of which must appear at most once."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name not in _SINGLE_HEADERS:
            continue
        if name in found:
            label = name.decode().title()
            raise RequestRefusal(DUPLICATE_HEADER, label=label)
        found[name] = value.decode("latin-1")
    return found


def _check_origin(method: str, headers: dict[bytes, str], raw: list[tuple[bytes, bytes]], grant: Grant) -> None:
    """A browser always names its origin on a POST; a same-origin GET is the one it may leave out."""
    origin = headers.get(b"origin")
    if grant.origin is None:
        if origin is not None:
            raise RequestRefusal(ORIGIN_NOT_ALLOWED, "token_without_origin")
        return
    if origin is None:
        sites = [value for name, value in raw if name == b"sec-fetch-site"]
        if method in ("GET", "HEAD") and sites == [b"same-origin"]:
            return
        raise RequestRefusal(ORIGIN_REQUIRED)
    if origin != grant.origin:
        raise RequestRefusal(ORIGIN_MISMATCH)


def _check_conversation_header(lane: LaneRoute, value: str | None, grant: Grant) -> None:
    """llama-server replaces a live stream that has the same id, so only the grant's id may pass."""
    if grant.conversation_id is None:
        if value is not None:
            raise RequestRefusal(CONVERSATION_NOT_GRANTED, "header")
        return
    if value is None:
        if lane.opens_conversation:
            raise RequestRefusal(MISSING_CONVERSATION_ID)
        return
    if value != grant.conversation_id:
        raise RequestRefusal(CONVERSATION_MISMATCH)


def _check_json_body_headers(headers: dict[bytes, str]) -> None:
    """The body is parsed as plain UTF-8 JSON, so anything else is refused before it is read."""
    media_type = headers.get(b"content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise RequestRefusal(UNSUPPORTED_MEDIA_TYPE)
    if headers.get(b"content-encoding", "identity").strip().lower() != "identity":
        raise RequestRefusal(UNSUPPORTED_ENCODING)


def _conversation_target(lane: LaneRoute, query: str | None, grant: Grant) -> str:
    """The route's path with only the grant's `conv_id` and, where the route takes one (a resume), a
    byte offset `from`."""
    params = _parse_query(query)
    allowed = set(lane.query)
    if not params.keys() <= allowed:
        names = " and ".join(sorted(allowed))
        raise RequestRefusal(BAD_QUERY, "only", names=names)
    conv_id = params.get("conv_id")
    if conv_id is None:
        raise RequestRefusal(BAD_QUERY, "conv_id")
    if grant.conversation_id is None:
        raise RequestRefusal(CONVERSATION_NOT_GRANTED)
    if conv_id != grant.conversation_id:
        raise RequestRefusal(CONVERSATION_MISMATCH, "query")
    target = f"{lane.path}?conv_id={quote(conv_id, safe='')}"
    offset = params.get("from")
    if offset is None:
        return target
    if not _DIGITS.fullmatch(offset):
        raise RequestRefusal(BAD_QUERY, "offset")
    return f"{target}&from={int(offset)}"


def _parse_query(query: str | None) -> dict[str, str]:
    """Name -> value; repeated, empty or oddly encoded parameters are refused, never guessed at."""
    if not query:
        return {}
    params: dict[str, str] = {}
    for pair in query.split("&"):
        name, mark, value = pair.partition("=")
        if not mark or not name:
            raise RequestRefusal(BAD_QUERY, "pair")
        if name in params:
            raise RequestRefusal(BAD_QUERY, "repeated")
        params[name] = _decode_query_value(value)
    return params


def _decode_query_value(value: str) -> str:
    """Strict percent-decoding: `+` (a space, or a plus?) and a stray `%` are refused."""
    if "+" in value or _PERCENT_TRIPLET.sub("", value).count("%"):
        raise RequestRefusal(BAD_QUERY, "encoding")
    raw = _PERCENT_TRIPLET.sub(lambda m: chr(int(m.group(1), 16)), value)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise RequestRefusal(BAD_QUERY, "encoding") from None
