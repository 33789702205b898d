"""`DirectAuth`: an `httpx.Auth` that lets one unchanged OpenAI SDK client hold a whole conversation.

A lane token is single use, so an SDK client built on one grant gets 401 on its second call, and its
own retries reuse the spent token too. This helper negotiates a fresh grant for every chat request
and every retry (httpx runs the auth flow once per `send`, and an SDK retry is a new `send`):

    client = openai.OpenAI(base_url=app + "/v1", api_key="unused",
                           http_client=httpx.Client(auth=DirectAuth(app)))

- `POST <app>/v1/chat/completions`: negotiate for the model named in the body, then send the same
  body to the grant's `url + "/v1/chat/completions"` with the grant's token (the SDK's own
  `Authorization` is replaced) and `X-Conversation-Id` from the grant. On `supported: false` the
  same body goes to the answer's `fallback_url` (the broker's baseline) with the access token.
- Any other route (`/v1/models`, ...) goes where the SDK sent it, to the broker, with the access token.
- A refused negotiation (401, 429, 404 for an unknown model, ...) is handed to the SDK as the response,
  so that it raises its own typed error and honours `Retry-After`. Nothing is raised inside the flow:
  the SDK would report that as "Connection error".
- The lane's response is never read here, so a stream reaches the SDK chunk by chunk; only a 401's
  small body is, and a `token_predates_gate` (the gate restarted after the broker last looked) is
  negotiated and sent once more.

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

import anyio
import httpx

from llama_direct.refusals import IssuedBeforeGateStart
from llama_direct.runtime import ACCESS_TOKEN_ENV, ACCESS_TOKEN_FILE_ENV

__all__ = ["DirectAuth"]
CHAT_PATH = "/v1/chat/completions"
NEGOTIATION_PATH = "/direct-stream"
PREDATES_GATE_WAIT = 1.0
_DROPPED_HEADERS = frozenset({"authorization", "cookie", "host", "content-length", "x-conversation-id"})
"""Headers of the SDK's request that never travel on: the auth is ours, the rest httpx recomputes."""


@dataclass(frozen=True)
class _Step:
    """One request of the flow, and whether the flow needs its response body before going on."""

    request: httpx.Request
    read: bool
    read_if_refused: bool = False
    """Read the body of a 401 only (small): it says whether a fresh token would be let through."""
    wait: float = 0.0
    """Seconds to wait before sending."""


_Flow = Generator[_Step, httpx.Response, None]


class DirectAuth(httpx.Auth):
    """Negotiates a fresh direct-lane grant per chat request; see the module docstring."""

    def __init__(
        self, base_url: str, access_token: str | None = None, *, token_file: str | os.PathLike[str] | None = None
    ) -> None:
        """`base_url` is the app's address as the ready line shows it (with any path prefix), not `/v1`."""
        self._base = httpx.URL(base_url.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ValueError("base_url must be the app's http(s) address, e.g. http://127.0.0.1:8000")
        self._access_token = _access_token(access_token, token_file)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        flow = self._flow(request)
        step = next(flow)
        while True:
            if step.wait:
                time.sleep(step.wait)
            response = yield step.request
            if step.read or (step.read_if_refused and response.status_code == 401):
                response.read()
            try:
                step = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = self._flow(request)
        step = next(flow)
        while True:
            if step.wait:
                await anyio.sleep(step.wait)
            response = yield step.request
            if step.read or (step.read_if_refused and response.status_code == 401):
                await response.aread()
            try:
                step = flow.send(response)
            except StopIteration:
                return

    def _flow(self, request: httpx.Request) -> _Flow:
        """The pure flow: requests out, responses in, no I/O. The last response yielded is the SDK's."""
        if not (request.method == "POST" and request.url.path == self._base.path.rstrip("/") + CHAT_PATH):
            yield _Step(self._to_broker(request, request.url), read=False)
            return
        wait = 0.0
        for first in (True, False):
            negotiation = yield _Step(self._negotiation(request), read=True, wait=wait)
            if negotiation.status_code != 200:
                return  # the SDK raises its own typed error for this response, and applies Retry-After
            grant = _json_object(negotiation.content)
            supported = grant.get("supported") is True
            if not (supported and isinstance(grant.get("url"), str) and isinstance(grant.get("token"), str)):
                break
            answer = yield _Step(_to_lane(request, grant), read=False, read_if_refused=first)
            if not (first and _predates_gate(answer)):
                return
            # The gate restarted after the broker last looked; its cut-off is at most one second
            # after the restart, so a token minted a second after this refusal is let through.
            wait = PREDATES_GATE_WAIT
        fallback = grant.get("fallback_url")
        path = fallback if isinstance(fallback, str) and fallback.startswith("/") else None
        target = self._base.copy_with(raw_path=path.encode("ascii", "replace")) if path else self._chat_url()
        yield _Step(self._to_broker(request, target), read=False)

    def _chat_url(self) -> httpx.URL:
        return self._base.copy_with(path=self._base.path.rstrip("/") + CHAT_PATH)

    def _negotiation(self, request: httpx.Request) -> httpx.Request:
        model = _json_object(request.content).get("model")
        options = {"model": model} if isinstance(model, str) and model else {}
        return httpx.Request(
            "POST",
            self._base.copy_with(path=self._base.path.rstrip("/") + NEGOTIATION_PATH),
            headers={"Authorization": f"Bearer {self._access_token}", "Accept": "application/json"},
            json=options,
            extensions=request.extensions,
        )

    def _to_broker(self, request: httpx.Request, url: httpx.URL) -> httpx.Request:
        return _rebuilt(request, url, f"Bearer {self._access_token}", conversation_id=None)


def _predates_gate(response: httpx.Response) -> bool:
    """A 401 `token_predates_gate`: the only refusal a second token minted at once would pass."""
    if response.status_code != 401:
        return False
    error = _json_object(response.content).get("error")
    return isinstance(error, dict) and error.get("reason") == IssuedBeforeGateStart.reason.code


def _to_lane(request: httpx.Request, grant: dict[str, object]) -> httpx.Request:
    conversation_id = grant.get("conversation_id")
    return _rebuilt(
        request,
        httpx.URL(str(grant["url"]).rstrip("/") + CHAT_PATH),
        f"Bearer {grant['token']}",
        conversation_id=conversation_id if isinstance(conversation_id, str) else None,
    )


def _rebuilt(
    request: httpx.Request, url: httpx.URL, authorization: str, *, conversation_id: str | None
) -> httpx.Request:
    """The SDK's request, sent to `url` with our `Authorization`; the body bytes are the SDK's own."""
    headers = [(name, value) for name, value in request.headers.items() if name.lower() not in _DROPPED_HEADERS]
    headers.append(("Authorization", authorization))
    if conversation_id is not None:
        headers.append(("X-Conversation-Id", conversation_id))
    return httpx.Request(request.method, url, headers=headers, content=request.content, extensions=request.extensions)


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
