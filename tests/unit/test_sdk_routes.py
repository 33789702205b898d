"""`DirectAuth` on both HTTP libraries (httpx and httpx2, sync and async) and on every lane route:
each request negotiates for its own route (looked up in the registry by method and path), its grant
is good for that route only, and a retry negotiates afresh. Driven through each library's
MockTransport, bare and under the real OpenAI and Anthropic SDKs."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from llama_direct.lanes import LANE_PREFIX, ROUTE_AT, ROUTES
from llama_direct.sdk import DirectAuth

APP = "http://app.test:8000"
ACCESS = "access-0123456789"
MODEL = "smol"
LIBRARIES = [pytest.param(httpx, id="httpx"), pytest.param(httpx2, id="httpx2")]

SDK_ROUTES = {
    "chat": ("POST", "/v1/chat/completions"),
    "responses": ("POST", "/v1/responses"),
    "completions": ("POST", "/v1/completions"),
    "embeddings": ("POST", "/v1/embeddings"),
    "messages": ("POST", "/v1/messages"),
    "messages_count_tokens": ("POST", "/v1/messages/count_tokens"),
}
"""The routes the two SDKs' calls land on, and what the registry calls each."""


def test_the_registry_names_each_sdk_route_as_the_helper_expects() -> None:
    for name, key in SDK_ROUTES.items():
        assert ROUTES[name].key == key
        assert ROUTE_AT[key] is ROUTES[name]


def _messages_events(texts: list[str]) -> Iterator[bytes]:
    """An Anthropic Messages stream, one SSE event at a time."""
    start = {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": MODEL,
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 0}}}
    events: list[dict[str, Any]] = [start, {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}]
    events += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}} for t in texts]
    events += [{"type": "content_block_stop", "index": 0},
               {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(texts)}},
               {"type": "message_stop"}]
    for event in events:
        yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _chat_events(texts: list[str]) -> Iterator[bytes]:
    for text in texts:
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


class Stream(httpx.SyncByteStream, httpx.AsyncByteStream, httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """SSE events handed out one at a time, counting how many the server has produced."""

    def __init__(self, events: Iterator[bytes]) -> None:
        self.events = events
        self.produced = 0

    def __iter__(self) -> Iterator[bytes]:
        for event in self.events:
            self.produced += 1
            yield event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self:
            yield event


MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "hello"}],
           "model": MODEL, "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 3, "output_tokens": 1}}
CHAT_COMPLETION = {"id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                                "finish_reason": "stop"}]}
EMBEDDING = {"object": "list", "model": MODEL, "usage": {"prompt_tokens": 1, "total_tokens": 1},
             "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}]}
COMPLETION = {"id": "c2", "object": "text_completion", "created": 0, "model": MODEL,
              "choices": [{"index": 0, "text": "hello", "finish_reason": "stop", "logprobs": None}]}
RESPONSE = {"id": "resp_1", "object": "response", "created_at": 0, "model": MODEL, "status": "completed",
            "output": [{"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "hello", "annotations": []}]}],
            "parallel_tool_calls": False, "tool_choice": "auto", "tools": []}


@dataclass
class FakeApp:
    """The broker and the lane: a grant is single use and good for the route it was negotiated for
    (403 on any other), as the gate's are; the baseline serves every route off the lane."""

    lib: ModuleType
    supported: bool = True
    lane_failures: int = 0
    predates_gate: int = 0
    answer_route: str | None = None
    """Name this route in the negotiation answer instead of the one asked for (a broker gone wrong)."""
    seen: list[Any] = field(default_factory=list)
    grants: dict[str, str] = field(default_factory=dict)
    """token -> the route it was negotiated for."""
    spent: set[str] = field(default_factory=set)
    negotiated: list[dict[str, Any]] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def __call__(self, request: Any) -> Any:
        assert isinstance(request, self.lib.Request), "a request of the other HTTP library reached this client"
        self.seen.append(request)
        path = request.url.path
        if path == "/direct-stream":
            return self._negotiate(request)
        if path.startswith(LANE_PREFIX + "/"):
            return self._lane(request, ROUTE_AT.get((request.method, path.removeprefix(LANE_PREFIX))))
        if request.headers.get("authorization") != f"Bearer {ACCESS}":
            return self._error(401, "login")
        if path == "/v1/models":
            return self.lib.Response(200, json={"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "x"}]})
        route = ROUTE_AT.get((request.method, path))
        if route is None or route.body is None:
            return self._error(404, "nothing here")
        return self._answer(request, route.name, lane="fallback")

    def _error(self, status: int, message: str, **more: str) -> Any:
        return self.lib.Response(status, json={"error": {"message": message, "code": status, **more}})

    def _negotiate(self, request: Any) -> Any:
        assert request.headers["authorization"] == f"Bearer {ACCESS}"
        options = json.loads(request.content or b"{}")
        self.negotiated.append(options)
        route = options.get("route", "chat")
        assert route in ROUTES, f"negotiation for {route!r}, which the registry lacks"
        if not self.supported:
            return self.lib.Response(200, json={"supported": False, "reason": "disabled",
                                                "fallback_url": "/v1/chat/completions"})
        token = f"grant-{next(self.counter)}"
        self.grants[token] = self.answer_route or route
        return self.lib.Response(200, json={"supported": True, "url": APP + LANE_PREFIX, "token": token,
                                            "model": MODEL, "route": self.answer_route or route,
                                            "conversation_id": None, "fallback_url": "/v1/chat/completions"})

    def _lane(self, request: Any, route: Any) -> Any:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.grants or token in self.spent:
            return self._error(401, "The token has already been used")
        self.spent.add(token)
        if route is None or self.grants[token] != route.name:
            return self._error(403, "This grant is for another route", reason="wrong_route")
        assert "x-api-key" not in request.headers, "the SDK's key travelled to the lane"
        if self.predates_gate:
            self.predates_gate -= 1
            return self._error(401, "restarted", reason="token_predates_gate")
        if self.lane_failures:
            self.lane_failures -= 1
            return self._error(502, "upstream down")
        return self._answer(request, route.name, lane="direct")

    def _answer(self, request: Any, route: str, *, lane: str) -> Any:
        body = json.loads(request.content)
        assert body.get("model") == MODEL
        headers = {"x-lane": lane, "x-route": route}
        if body.get("stream"):
            stream = Stream(_messages_events(["a", "b", "c"]) if route == "messages" else _chat_events(["a", "b", "c"]))
            self.streams.append(stream)
            return self.lib.Response(200, headers={**headers, "content-type": "text/event-stream"}, stream=stream)
        answers = {"chat": CHAT_COMPLETION, "messages": MESSAGE, "messages_count_tokens": {"input_tokens": 7},
                   "embeddings": EMBEDDING, "completions": COMPLETION, "responses": RESPONSE}
        return self.lib.Response(200, headers=headers, json=answers[route])

    def paths(self) -> list[str]:
        return [r.url.path for r in self.seen]


def _post(lib: ModuleType, app: FakeApp, path: str, body: dict[str, Any], *, asynchronous: bool) -> Any:
    """One request through a bare client of `lib` with DirectAuth: no SDK in the way."""
    headers = {"Authorization": "Bearer unused", "x-api-key": "unused"}
    if not asynchronous:
        with lib.Client(transport=lib.MockTransport(app), auth=DirectAuth(APP, ACCESS)) as client:
            response = client.post(APP + path, json=body, headers=headers)
            response.read()
            return response

    async def main() -> Any:
        async with lib.AsyncClient(transport=lib.MockTransport(app), auth=DirectAuth(APP, ACCESS)) as client:
            response = await client.post(APP + path, json=body, headers=headers)
            await response.aread()
            return response

    return asyncio.run(main())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("lib", LIBRARIES)
@pytest.mark.parametrize("name", list(SDK_ROUTES))
def test_each_request_negotiates_for_its_own_route(lib: ModuleType, asynchronous: bool, name: str) -> None:
    app = FakeApp(lib)
    path = ROUTES[name].path
    response = _post(lib, app, path, {"model": MODEL, "input": "hi", "messages": []}, asynchronous=asynchronous)
    assert (response.status_code, response.headers["x-lane"], response.headers["x-route"]) == (200, "direct", name)
    assert app.paths() == ["/direct-stream", LANE_PREFIX + path]
    # chat is the default route, so a negotiation for chat need not name it (and a broker from before
    # per-route grants still answers it); every other route is named
    assert app.negotiated == [{"model": MODEL} if name == "chat" else {"route": name, "model": MODEL}]
    lane = app.seen[1]
    assert lane.headers["authorization"] == "Bearer grant-0"
    assert "x-api-key" not in lane.headers


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("lib", LIBRARIES)
def test_a_token_older_than_a_gate_restart_is_renegotiated_for_the_same_route(
    lib: ModuleType, asynchronous: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    waits: list[float] = []
    monkeypatch.setattr("llama_direct.sdk.time.sleep", waits.append)
    monkeypatch.setattr("llama_direct.sdk.anyio.sleep", no_wait)
    app = FakeApp(lib, predates_gate=1)
    response = _post(lib, app, "/v1/messages", {"model": MODEL, "messages": []}, asynchronous=asynchronous)
    assert (response.status_code, response.headers["x-lane"]) == (200, "direct")
    assert app.paths() == ["/direct-stream", "/direct/v1/messages"] * 2
    assert app.negotiated == [{"route": "messages", "model": MODEL}] * 2
    assert waits == [1.0]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("lib", LIBRARIES)
def test_unsupported_sends_a_route_to_its_own_baseline_not_chats(lib: ModuleType, asynchronous: bool) -> None:
    """The answer's `fallback_url` is chat's: a Messages body goes to the app's `/v1/messages` instead."""
    app = FakeApp(lib, supported=False)
    response = _post(lib, app, "/v1/messages", {"model": MODEL, "messages": []}, asynchronous=asynchronous)
    assert (response.headers["x-lane"], response.headers["x-route"]) == ("fallback", "messages")
    assert app.paths() == ["/direct-stream", "/v1/messages"]
    assert app.seen[1].headers["authorization"] == f"Bearer {ACCESS}"
    assert "x-api-key" not in app.seen[1].headers
    chat = FakeApp(lib, supported=False)
    assert _post(lib, chat, "/v1/chat/completions", {"model": MODEL}, asynchronous=asynchronous).status_code == 200
    assert chat.paths() == ["/direct-stream", "/v1/chat/completions"]


@pytest.mark.parametrize("lib", LIBRARIES)
def test_a_grant_answered_for_another_route_is_not_spent_on_this_one(lib: ModuleType) -> None:
    app = FakeApp(lib, answer_route="chat")
    response = _post(lib, app, "/v1/messages", {"model": MODEL, "messages": []}, asynchronous=False)
    assert (response.headers["x-lane"], response.headers["x-route"]) == ("fallback", "messages")
    assert app.paths() == ["/direct-stream", "/v1/messages"]


@pytest.mark.parametrize("lib", LIBRARIES)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("GET", "/v1/messages"), ("GET", "/v1/stream"), ("DELETE", "/v1/stream"),
     ("POST", "/v1/messages/other"), ("POST", "/v2/messages")],
)
def test_what_is_no_lane_route_goes_to_the_app_as_sent(lib: ModuleType, method: str, path: str) -> None:
    """Resume and cancel are lane routes, but they name a conversation no SDK holds: the app's too."""
    app = FakeApp(lib)
    with lib.Client(transport=lib.MockTransport(app), auth=DirectAuth(APP, ACCESS)) as client:
        client.request(method, APP + path)
    assert app.paths() == [path]
    assert app.seen[0].headers["authorization"] == f"Bearer {ACCESS}"


@pytest.mark.parametrize("lib", LIBRARIES)
def test_routes_are_looked_up_under_the_apps_path_prefix(lib: ModuleType) -> None:
    seen: list[Any] = []

    def handler(request: Any) -> Any:
        seen.append(request)
        if request.url.path == "/llm/direct-stream":
            return lib.Response(200, json={"supported": False, "fallback_url": "/llm/v1/messages"})
        return lib.Response(200, json={})

    with lib.Client(transport=lib.MockTransport(handler), auth=DirectAuth(APP + "/llm", ACCESS)) as client:
        client.post(APP + "/llm/v1/messages", json={"model": MODEL})
        client.post(APP + "/v1/messages", json={"model": MODEL})  # not under the app: not a lane route
    assert [(r.url.path, json.loads(r.content)) for r in seen] == [
        ("/llm/direct-stream", {"route": "messages", "model": MODEL}),
        ("/llm/v1/messages", {"model": MODEL}),
        ("/v1/messages", {"model": MODEL}),
    ]


def test_one_class_is_an_auth_of_both_libraries() -> None:
    auth = DirectAuth(APP, ACCESS)
    assert isinstance(auth, httpx.Auth) and isinstance(auth, httpx2.Auth)
    for client in (httpx.Client(auth=auth), httpx2.Client(auth=auth), httpx.AsyncClient(auth=auth),
                   httpx2.AsyncClient(auth=auth)):
        assert client.auth is auth


# The SDKs themselves: the Anthropic SDK takes only an httpx2 client; the OpenAI SDK takes either.


def _anthropic(app: FakeApp, max_retries: int = 0) -> anthropic.Anthropic:
    http = httpx2.Client(transport=httpx2.MockTransport(app), auth=DirectAuth(APP, ACCESS))
    return anthropic.Anthropic(base_url=APP, api_key="unused", http_client=http, max_retries=max_retries)


def _async_anthropic(app: FakeApp, max_retries: int = 0) -> anthropic.AsyncAnthropic:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(app), auth=DirectAuth(APP, ACCESS))
    return anthropic.AsyncAnthropic(base_url=APP, api_key="unused", http_client=http, max_retries=max_retries)


ASK: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]


def _text(message: anthropic.types.Message) -> str:
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    return block.text


def test_the_anthropic_sdk_streams_counts_and_asks_on_fresh_grants_for_each_route() -> None:
    app = FakeApp(httpx2)
    client = _anthropic(app)
    assert client.models.list().data[0].id == MODEL  # the app's list, in OpenAI's shape: the id reads the same
    assert app.paths() == ["/v1/models"]
    app.seen.clear()
    with client.messages.stream(model=MODEL, max_tokens=16, messages=ASK) as stream:
        texts = iter(stream.text_stream)
        assert next(texts) == "a"
        assert app.streams[-1].produced < 8, "the helper read the stream before the SDK"
        assert list(texts) == ["b", "c"]
    count = client.messages.count_tokens(model=MODEL, messages=ASK)
    assert count.input_tokens == 7
    reply = client.messages.create(model=MODEL, max_tokens=16, messages=ASK)
    assert _text(reply) == "hello"
    assert app.paths() == ["/direct-stream", "/direct/v1/messages", "/direct-stream",
                           "/direct/v1/messages/count_tokens", "/direct-stream", "/direct/v1/messages"]
    assert [n.get("route") for n in app.negotiated] == ["messages", "messages_count_tokens", "messages"]
    lane = app.seen[1]
    assert lane.headers["anthropic-version"] and lane.headers["x-stainless-lang"] == "python"
    assert len(app.spent) == 3


def test_the_anthropic_sdks_retry_after_a_lane_5xx_takes_a_fresh_grant() -> None:
    app = FakeApp(httpx2, lane_failures=1)
    reply = _anthropic(app, max_retries=2).messages.create(model=MODEL, max_tokens=16, messages=ASK)
    assert _text(reply) == "hello"
    assert app.paths() == ["/direct-stream", "/direct/v1/messages"] * 2
    assert [r.headers["authorization"] for r in app.seen if r.url.path.startswith("/direct/")] == [
        "Bearer grant-0", "Bearer grant-1"]


def test_the_async_anthropic_sdk_streams_and_counts_with_a_retry() -> None:
    async def main() -> None:
        app = FakeApp(httpx2, lane_failures=1)
        client = _async_anthropic(app, max_retries=1)
        async with client.messages.stream(model=MODEL, max_tokens=16, messages=ASK) as stream:
            texts = [text async for text in stream.text_stream]
        assert texts == ["a", "b", "c"]
        assert (await client.messages.count_tokens(model=MODEL, messages=ASK)).input_tokens == 7
        assert app.paths() == ["/direct-stream", "/direct/v1/messages"] * 2 + [
            "/direct-stream", "/direct/v1/messages/count_tokens"]
        await client.close()

    asyncio.run(main())


def test_the_anthropic_sdk_falls_back_to_its_own_route() -> None:
    app = FakeApp(httpx2, supported=False)
    reply = _anthropic(app).messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=ASK)
    assert reply.headers["x-lane"] == "fallback"
    assert app.paths() == ["/direct-stream", "/v1/messages"]


@pytest.mark.parametrize("lib", LIBRARIES)
def test_the_openai_sdk_on_either_library_negotiates_per_route(lib: ModuleType) -> None:
    app = FakeApp(lib)
    http = lib.Client(transport=lib.MockTransport(app), auth=DirectAuth(APP, ACCESS))
    client = openai.OpenAI(base_url=APP + "/v1", api_key="unused", http_client=http, max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "hello"
    assert client.responses.create(model=MODEL, input="hi").output_text == "hello"
    assert client.completions.create(model=MODEL, prompt="hi").choices[0].text == "hello"
    assert client.embeddings.create(model=MODEL, input="hi").data[0].embedding == [0.5, -0.5]
    assert [n.get("route", "chat") for n in app.negotiated] == ["chat", "responses", "completions", "embeddings"]
    assert [p for p in app.paths() if p.startswith("/direct/")] == [
        "/direct/v1/chat/completions", "/direct/v1/responses", "/direct/v1/completions", "/direct/v1/embeddings"]


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param("import sys; sys.modules['httpx2'] = None", id="without-httpx2"),
        pytest.param("import httpx2; httpx2.alias_httpx()", id="httpx-aliased-to-httpx2"),
    ],
)
def test_the_helper_imports_where_httpx2_is_absent_or_stands_in_for_httpx(setup: str) -> None:
    """Without httpx2 there is one base class; with `alias_httpx()` both names are one class."""
    code = (
        f"{setup}\n"
        "import httpx\n"
        "from llama_direct.sdk import DirectAuth\n"
        "auth = DirectAuth('http://app.test', 'access')\n"
        "seen = []\n"
        "def handler(request):\n"
        "    seen.append(request.url.path)\n"
        "    return httpx.Response(200, json={'supported': False})\n"
        "with httpx.Client(transport=httpx.MockTransport(handler), auth=auth) as client:\n"
        "    client.post('http://app.test/v1/chat/completions', json={})\n"
        "print(seen)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['/direct-stream', '/v1/chat/completions']"
