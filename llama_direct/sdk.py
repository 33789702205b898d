"""`DirectAuth`: an httpx `Auth` that lets one unchanged OpenAI or Anthropic SDK client hold a whole
conversation.

A lane token is single use, so an SDK client built on one grant gets 401 on its second call, and its
own retries reuse the spent token too. This helper negotiates a fresh grant for every request to a
lane route and every retry (httpx runs the auth flow once per `send`, and an SDK retry is a new `send`):

    client = openai.OpenAI(base_url=app + "/v1", api_key="unused",
                           http_client=httpx.Client(auth=DirectAuth(app)))
    client = anthropic.Anthropic(base_url=app, api_key="unused",
                                 http_client=httpx2.Client(auth=DirectAuth(app)))

- A request whose method and path (under the app's address) are a lane route of the registry
  (`llama_direct.lanes.ROUTE_AT`: `POST /v1/chat/completions`, and whatever other routes the registry
  holds, such as `/v1/responses` or `/v1/messages`): negotiate for that route (`{"route": name}`; chat,
  the default, is not named) and the model named in the body, then send the same body to the grant's
  `url` plus the route's path with the grant's token (the SDK's own `Authorization` and `x-api-key`
  are replaced) and `X-Conversation-Id` from the grant. On `supported: false` the same body goes to
  the answer's `fallback_url` when it names this route, else where the SDK sent it (the broker's
  baseline serves the same route off the lane), with the access token.
- Any other route (`/v1/models`, ...) goes where the SDK sent it, to the broker, with the access token.
- A refused negotiation (401, 429, 404 for an unknown model, ...) is handed to the SDK as the response,
  so that it raises its own typed error and honours `Retry-After`. Nothing is raised inside the flow:
  the SDK would report that as "Connection error".
- The lane's response is never read here, so a stream reaches the SDK chunk by chunk; only a 401's
  small body is, and a `token_predates_gate` (the gate restarted after the broker last looked) is
  negotiated and sent once more.

**httpx and httpx2.** The OpenAI SDK (3.x) takes either library's client; the Anthropic SDK (2.x)
only `httpx2.Client`, and httpx2 takes as `auth` only its own `Auth` subclasses. The two libraries
share their Auth protocol (a generator that yields requests and is sent responses) but not their
classes, so `DirectAuth` subclasses both `Auth` base classes (httpx2's only where it is installed),
and its flow is written once over plain data (`_Call`): the sync and async shells turn each `_Call`
into a request of the same class as the one the client handed in, so each client only ever sees its
own library's requests.

The access token comes from the constructor, `LLAMA_DIRECT_ACCESS_TOKEN`, or a file
(`token_file` or `LLAMA_DIRECT_ACCESS_TOKEN_FILE`); never from the command line. This module holds
no key of the server's and imports nothing from `broker` or `llama_launcher`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, overload

import anyio
import httpx

from llama_direct.documents import Granted, NegotiationAnswer, parse_negotiation
from llama_direct.lanes import CHAT, NEGOTIATION_PATH, ROUTE_AT, LaneRoute
from llama_direct.refusals import IssuedBeforeGateStart
from llama_direct.runtime import ACCESS_TOKEN_ENV, ACCESS_TOKEN_FILE_ENV

if TYPE_CHECKING:
    import httpx2
    from httpx2 import Auth as _Httpx2Auth
else:

    def _httpx2_auth() -> type:
        """httpx2's `Auth`, or an empty class where httpx2 is absent or stands in for httpx
        (`httpx2.alias_httpx()`), so that the bases never repeat."""
        try:
            import httpx2
        except ModuleNotFoundError:  # no SDK that needs it is installed either
            return type("_NoHttpx2Auth", (), {"__slots__": ()})
        return httpx2.Auth if httpx2.Auth is not httpx.Auth else type("_NoHttpx2Auth", (), {"__slots__": ()})

    _Httpx2Auth = _httpx2_auth()

__all__ = ["DirectAuth"]
PREDATES_GATE_WAIT = 1.0
DEFAULT_ROUTE = CHAT
"""The route a negotiation that names none is for; the helper names every other one."""
_DROPPED_HEADERS = frozenset(
    {"authorization", "x-api-key", "cookie", "host", "content-length", "x-conversation-id"}
)
"""Headers of the SDK's request that never travel on: the auth is ours (the OpenAI SDK's key rides in
`Authorization`, the Anthropic SDK's in `x-api-key`), the rest httpx recomputes."""


@dataclass(frozen=True)
class _Call:
    """A request as the flow reads and writes it: no HTTP library's types, so one flow serves both."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    content: bytes


class _Answer(Protocol):
    """What the flow reads of a response (an `httpx.Response` or an `httpx2.Response`)."""

    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...


@dataclass(frozen=True)
class _Step:
    """One request of the flow, and whether the flow needs its response body before going on."""

    call: _Call
    read: bool
    read_if_refused: bool = False
    """Read the body of a 401 only (small): it says whether a fresh token would be let through."""
    wait: float = 0.0
    """Seconds to wait before sending."""


_Flow = Generator[_Step, _Answer, None]


class DirectAuth(httpx.Auth, _Httpx2Auth):
    """Negotiates a fresh direct-lane grant per lane-route request; see the module docstring."""

    def __init__(
        self, base_url: str, access_token: str | None = None, *, token_file: str | os.PathLike[str] | None = None
    ) -> None:
        """`base_url` is the app's address as the ready line shows it (with any path prefix), not `/v1`."""
        self._base = httpx.URL(base_url.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ValueError("base_url must be the app's http(s) address, e.g. http://127.0.0.1:8000")
        self._access_token = _access_token(access_token, token_file)

    @overload
    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]: ...

    @overload
    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]: ...

    def auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        """Both clients call the two flows below; this, the base classes' generic hook, is the sync one."""
        return self.sync_auth_flow(request)

    @overload
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]: ...

    @overload
    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]: ...

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        request.read()
        flow = self._flow(_call_of(request))
        step = next(flow)
        while True:
            if step.wait:
                time.sleep(step.wait)
            response = yield _request_like(request, step.call)
            if step.read or (step.read_if_refused and response.status_code == 401):
                response.read()
            try:
                step = flow.send(response)
            except StopIteration:
                return

    @overload
    def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]: ...

    @overload
    def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]: ...

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        await request.aread()
        flow = self._flow(_call_of(request))
        step = next(flow)
        while True:
            if step.wait:
                await anyio.sleep(step.wait)
            response = yield _request_like(request, step.call)
            if step.read or (step.read_if_refused and response.status_code == 401):
                await response.aread()
            try:
                step = flow.send(response)
            except StopIteration:
                return

    def _flow(self, request: _Call) -> _Flow:
        """The pure flow: requests out, responses in, no I/O. The last response yielded is the SDK's."""
        route = self._route_of(request)
        if route is None:
            yield _Step(self._to_broker(request, request.url), read=False)
            return
        wait = 0.0
        for first in (True, False):
            negotiation = yield _Step(self._negotiation(request, route), read=True, wait=wait)
            if negotiation.status_code != 200:
                return  # the SDK raises its own typed error for this response, and applies Retry-After
            grant = parse_negotiation(negotiation.content)
            if grant is None or not grant["supported"] or grant["route"] not in ("", route.name):
                break  # anything but a grant for this route takes the baseline ("": a broker that names none)
            answer = yield _Step(_to_lane(request, grant, route), read=False, read_if_refused=first)
            if not (first and _predates_gate(answer)):
                return
            # The gate restarted after the broker last looked; its cut-off is at most one second
            # after the restart, so a token minted a second after this refusal is let through.
            wait = PREDATES_GATE_WAIT
        yield _Step(self._to_broker(request, self._fallback(request, grant, route)), read=False)

    def _route_of(self, request: _Call) -> LaneRoute | None:
        """The lane route the SDK's request is for: its method and its path under the app's address
        name a registry entry. Resume and cancel name a conversation the SDK never holds: not these."""
        prefix = self._base.path.rstrip("/")
        path = httpx.URL(request.url).path
        if not path.startswith(prefix + "/"):
            return None
        route = ROUTE_AT.get((request.method, path[len(prefix):]))
        return route if route is not None and not route.continues_conversation else None

    def _fallback(self, request: _Call, grant: NegotiationAnswer | None, route: LaneRoute) -> str:
        """The answer's `fallback_url` when it names this route; else where the SDK sent it, the app's
        own copy of the route (the baseline serves each lane route off the lane)."""
        fallback = grant["fallback_url"] if grant is not None else ""
        if fallback.startswith("/") and fallback.endswith(route.path):
            return str(self._base.copy_with(raw_path=fallback.encode("ascii", "replace")))
        return request.url

    def _negotiation(self, request: _Call, route: LaneRoute) -> _Call:
        model = _json_object(request.content).get("model")
        options: dict[str, str] = {} if route == DEFAULT_ROUTE else {"route": route.name}
        if isinstance(model, str) and model:
            options["model"] = model
        return _Call(
            "POST",
            str(self._base.copy_with(path=self._base.path.rstrip("/") + NEGOTIATION_PATH)),
            (
                ("Authorization", f"Bearer {self._access_token}"),
                ("Accept", "application/json"),
                ("Content-Type", "application/json"),
            ),
            json.dumps(options).encode(),
        )

    def _to_broker(self, request: _Call, url: str) -> _Call:
        return _rebuilt(request, url, f"Bearer {self._access_token}", conversation_id=None)


def _call_of(request: httpx.Request | httpx2.Request) -> _Call:
    return _Call(request.method, str(request.url), tuple(request.headers.multi_items()), request.content)


def _request_like(original: Any, call: _Call) -> Any:
    """`call` as a request of the same class as `original` (httpx's or httpx2's), with its extensions
    (the client's timeouts)."""
    return type(original)(
        call.method, call.url, headers=list(call.headers), content=call.content, extensions=original.extensions
    )


def _predates_gate(response: _Answer) -> bool:
    """A 401 `token_predates_gate`: the only refusal a second token minted at once would pass."""
    if response.status_code != 401:
        return False
    error = _json_object(response.content).get("error")
    return isinstance(error, dict) and error.get("reason") == IssuedBeforeGateStart.reason.code


def _to_lane(request: _Call, grant: Granted, route: LaneRoute) -> _Call:
    return _rebuilt(request, grant["url"] + route.path, f"Bearer {grant['token']}",
                    conversation_id=grant["conversation_id"])


def _rebuilt(request: _Call, url: str, authorization: str, *, conversation_id: str | None) -> _Call:
    """The SDK's request, sent to `url` with our `Authorization`; the body bytes are the SDK's own."""
    headers = [(name, value) for name, value in request.headers if name.lower() not in _DROPPED_HEADERS]
    headers.append(("Authorization", authorization))
    if conversation_id is not None:
        headers.append(("X-Conversation-Id", conversation_id))
    return _Call(request.method, url, tuple(headers), request.content)


def _json_object(content: bytes) -> dict[str, object]:
    """`content` as a JSON object, or `{}`: a body the helper cannot read is the server's to refuse."""
    try:
        value = json.loads(content) if content else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _access_token(given: str | None, token_file: str | os.PathLike[str] | None) -> str:
    token = given or os.environ.get(ACCESS_TOKEN_ENV)
    path = token_file or os.environ.get(ACCESS_TOKEN_FILE_ENV)
    if not token and path:
        token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(
            f"No access token: pass access_token, or set {ACCESS_TOKEN_ENV} or {ACCESS_TOKEN_FILE_ENV}, "
            "or pass token_file (never put it on the command line)."
        )
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise ValueError("The access token must be printable ASCII without spaces.")
    return token
