"""`llama_direct.sdk.DirectAuth` driven by the real OpenAI SDK, against a scripted app on httpx.MockTransport."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from llama_direct.sdk import ACCESS_TOKEN_ENV, ACCESS_TOKEN_FILE_ENV, DirectAuth

APP = "http://app.test:8000"
ACCESS = "access-0123456789"
MODEL = "smol"
MESSAGES = [{"role": "user", "content": "hi"}]
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 0,
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
}


def _chunk(text: str) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class Stream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """SSE chunks handed out one at a time, recording how many the server has produced."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.produced = 0

    def _chunks(self) -> Iterator[bytes]:
        for text in self.texts:
            self.produced += 1
            yield _chunk(text)
        yield b"data: [DONE]\n\n"

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks():
            yield chunk


@dataclass
class FakeApp:
    """The broker and the lane as the helper sees them: grants are single use, as the gate's are."""

    supported: bool = True
    negotiation_status: int = 200
    lane_failures: int = 0
    predates_gate: int = 0
    """Lane requests answered 401 `token_predates_gate` first (a gate restarted after the broker looked)."""
    conversation_id: str | None = None
    prefix: str = ""
    seen: list[httpx.Request] = field(default_factory=list)
    issued: set[str] = field(default_factory=set)
    spent: set[str] = field(default_factory=set)
    streams: list[Stream] = field(default_factory=list)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if path == self.prefix + "/direct-stream":
            return self._negotiate(request)
        if path == self.prefix + "/direct/v1/chat/completions":
            return self._lane(request)
        if path in (self.prefix + "/v1/chat/completions", self.prefix + "/v1/models"):
            if request.headers.get("authorization") != f"Bearer {ACCESS}":
                return httpx.Response(401, json={"error": {"message": "login", "code": 401}})
            if path.endswith("/models"):
                return httpx.Response(200, json={"object": "list", "data": [{"id": MODEL, "object": "model",
                                                                             "created": 0, "owned_by": "x"}]})
            return self._answer(request, lane=False)
        return httpx.Response(404, json={"error": {"message": "nothing here", "code": 404}})

    def _negotiate(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {ACCESS}"
        if self.negotiation_status != 200:
            headers = {"Retry-After": "0"} if self.negotiation_status == 429 else {}
            return httpx.Response(self.negotiation_status, headers=headers,
                                  json={"error": {"message": "refused", "code": self.negotiation_status}})
        options = json.loads(request.content or b"{}")
        if options.get("model") not in (None, MODEL):
            return httpx.Response(400, json={"error": {"message": "no such model", "code": 400,
                                                       "reason": "unknown_model", "param": "other"}})
        fallback = self.prefix + "/v1/chat/completions"
        if not self.supported:
            return httpx.Response(200, json={"supported": False, "reason": "disabled", "fallback_url": fallback})
        token = f"grant-{next(self.counter)}"
        self.issued.add(token)
        return httpx.Response(200, json={"supported": True, "url": APP + self.prefix + "/direct", "token": token,
                                         "model": MODEL, "conversation_id": self.conversation_id,
                                         "fallback_url": fallback})

    def _lane(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.issued or token in self.spent:
            return httpx.Response(401, json={"error": {"message": "The token has already been used", "code": 401}})
        self.spent.add(token)
        if self.predates_gate:
            self.predates_gate -= 1
            return httpx.Response(401, json={"error": {"message": "restarted", "code": 401,
                                                       "reason": "token_predates_gate"}})
        if self.conversation_id is not None:
            assert request.headers["x-conversation-id"] == self.conversation_id
        if self.lane_failures:
            self.lane_failures -= 1
            return httpx.Response(502, json={"error": {"message": "upstream down", "code": 502}})
        return self._answer(request, lane=True)

    def _answer(self, request: httpx.Request, *, lane: bool) -> httpx.Response:
        body = json.loads(request.content)
        assert body["messages"] and body["model"] == MODEL
        headers = {"x-lane": "direct" if lane else "fallback"}
        if body.get("stream"):
            stream = Stream(["a", "b", "c"])
            self.streams.append(stream)
            return httpx.Response(200, headers={**headers, "content-type": "text/event-stream"}, stream=stream)
        return httpx.Response(200, headers=headers, json=COMPLETION)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.seen]


def _client(app: FakeApp, max_retries: int = 0, base: str = APP) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.MockTransport(app), auth=DirectAuth(base, ACCESS))
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", http_client=http, max_retries=max_retries)


def _async_client(app: FakeApp, max_retries: int = 0) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.MockTransport(app), auth=DirectAuth(APP, ACCESS))
    return openai.AsyncOpenAI(base_url=APP + "/v1", api_key="unused", http_client=http, max_retries=max_retries)


def test_three_turns_on_one_client_each_take_a_fresh_grant() -> None:
    app = FakeApp()
    client = _client(app)
    for _ in range(3):
        reply = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert reply.headers["x-lane"] == "direct"
        assert reply.parse().choices[0].message.content == "hello"
    assert app.paths() == ["/direct-stream", "/direct/v1/chat/completions"] * 3
    assert len(app.spent) == 3
    lane = app.seen[1]
    assert "unused" not in lane.headers["authorization"]
    assert lane.headers["x-stainless-lang"] == "python"  # the SDK's own headers still travel
    assert json.loads(app.seen[0].content) == {"model": MODEL}


def test_streaming_turns_are_not_buffered() -> None:
    app = FakeApp()
    client = _client(app)
    for _ in range(3):
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.content == "a"
        assert app.streams[-1].produced < len(app.streams[-1].texts), "the helper read the stream before the SDK"
        assert [c.choices[0].delta.content for c in stream] == ["b", "c"]
    assert len(app.spent) == 3


def test_the_sdks_retry_after_a_lane_5xx_takes_a_fresh_grant() -> None:
    app = FakeApp(lane_failures=1)
    reply = _client(app, max_retries=2).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content == "hello"
    assert app.paths() == ["/direct-stream", "/direct/v1/chat/completions"] * 2
    tokens = [r.headers["authorization"] for r in app.seen if r.url.path.startswith("/direct/")]
    assert len(set(tokens)) == 2


def test_a_token_older_than_a_gate_restart_is_negotiated_and_sent_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("llama_direct.sdk.time.sleep", waits.append)
    app = FakeApp(predates_gate=1)
    reply = _client(app).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content == "hello"
    assert app.paths() == ["/direct-stream", "/direct/v1/chat/completions"] * 2
    assert waits == [1.0]  # the cut-off is at most a second after the restart
    twice = FakeApp(predates_gate=2)
    with pytest.raises(openai.AuthenticationError):
        _client(twice).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert twice.paths() == ["/direct-stream", "/direct/v1/chat/completions"] * 2  # once more, not again


def test_unsupported_sends_the_same_body_to_the_fallback_with_the_access_token() -> None:
    app = FakeApp(supported=False)
    client = _client(app)
    for stream in (False, True, False):
        reply = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, stream=stream)
        assert reply.headers["x-lane"] == "fallback"
    assert app.paths() == ["/direct-stream", "/v1/chat/completions"] * 3
    fallback = app.seen[1]
    assert fallback.headers["authorization"] == f"Bearer {ACCESS}"
    assert fallback.content == app.seen[1].content and json.loads(fallback.content)["messages"] == MESSAGES


def test_fallback_and_negotiation_follow_a_path_prefix() -> None:
    app = FakeApp(supported=False, prefix="/llm")
    reply = _client(app, base=APP + "/llm").chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content == "hello"
    assert app.paths() == ["/llm/direct-stream", "/llm/v1/chat/completions"]


def test_other_routes_go_to_the_broker_with_the_access_token() -> None:
    app = FakeApp()
    models = _client(app).models.list()
    assert [m.id for m in models] == [MODEL]
    assert app.paths() == ["/v1/models"]
    assert app.seen[0].headers["authorization"] == f"Bearer {ACCESS}"


def test_the_grants_conversation_id_is_sent() -> None:
    app = FakeApp(conversation_id="conv-1")
    assert _client(app).chat.completions.create(model=MODEL, messages=MESSAGES).choices


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, openai.AuthenticationError), (429, openai.RateLimitError), (400, openai.BadRequestError)],
)
def test_a_refused_negotiation_is_the_sdks_typed_error_not_a_connection_error(status: int, error: type) -> None:
    app = FakeApp(negotiation_status=status)
    with pytest.raises(error) as excinfo:
        _client(app).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert excinfo.value.status_code == status
    assert app.paths() == ["/direct-stream"]


def test_a_rate_limited_negotiation_is_retried_by_the_sdk() -> None:
    app = FakeApp(negotiation_status=429)
    with pytest.raises(openai.RateLimitError):
        _client(app, max_retries=2).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert app.paths() == ["/direct-stream"] * 3


def test_an_unknown_model_is_the_sdks_bad_request() -> None:
    app = FakeApp()
    with pytest.raises(openai.BadRequestError):
        _client(app).chat.completions.create(model="other", messages=MESSAGES)
    assert json.loads(app.seen[0].content) == {"model": "other"}


def test_an_unreadable_negotiation_answer_takes_the_baseline() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/direct-stream":
            return httpx.Response(200, content=b"<html>")
        return FakeApp()(request)

    http = httpx.Client(transport=httpx.MockTransport(handler), auth=DirectAuth(APP, ACCESS))
    client = openai.OpenAI(base_url=APP + "/v1", api_key="unused", http_client=http, max_retries=0)
    assert client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES).headers["x-lane"] == (
        "fallback"
    )


def test_async_three_turns_streaming_and_not_with_a_retry() -> None:
    async def main() -> None:
        app = FakeApp(lane_failures=1)
        client = _async_client(app, max_retries=1)
        reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content == "hello"
        for _ in range(2):
            stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            texts = []
            async for chunk in stream:
                if not texts:
                    assert app.streams[-1].produced < 3
                texts.append(chunk.choices[0].delta.content)
            assert texts == ["a", "b", "c"]
        assert len(app.spent) == 4
        with pytest.raises(openai.AuthenticationError):
            await _async_client(FakeApp(negotiation_status=401)).chat.completions.create(model=MODEL, messages=MESSAGES)

    asyncio.run(main())


def test_async_fallback() -> None:
    async def main() -> None:
        app = FakeApp(supported=False)
        client = _async_client(app)
        for _ in range(3):
            assert (await client.chat.completions.create(model=MODEL, messages=MESSAGES)).choices
        assert app.paths() == ["/direct-stream", "/v1/chat/completions"] * 3

    asyncio.run(main())


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ACCESS_TOKEN_ENV, raising=False)
    monkeypatch.delenv(ACCESS_TOKEN_FILE_ENV, raising=False)


def _auth_token(auth: DirectAuth) -> str:
    request = httpx.Request("GET", APP + "/v1/models")
    return next(auth.sync_auth_flow(request)).headers["authorization"]


@pytest.mark.parametrize("source", ["env", "env_file", "file"])
def test_the_access_token_comes_from_the_environment_or_a_file(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    path = tmp_path / "token"
    path.write_text(ACCESS + "\n")
    make: dict[str, Callable[[], DirectAuth]] = {
        "env": lambda: (monkeypatch.setenv(ACCESS_TOKEN_ENV, ACCESS), DirectAuth(APP))[1],
        "env_file": lambda: (monkeypatch.setenv(ACCESS_TOKEN_FILE_ENV, str(path)), DirectAuth(APP))[1],
        "file": lambda: DirectAuth(APP, token_file=path),
    }
    assert _auth_token(make[source]()) == f"Bearer {ACCESS}"


def test_no_token_or_a_bad_one_is_refused_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    with pytest.raises(ValueError, match="No access token"):
        DirectAuth(APP)
    with pytest.raises(ValueError, match="printable"):
        DirectAuth(APP, "a b\r\n")
    with pytest.raises(ValueError, match="base_url"):
        DirectAuth("app.test:8000", ACCESS)


def test_the_module_imports_nothing_that_holds_keys() -> None:
    code = (
        "import sys, llama_direct.sdk\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('broker', 'llama_launcher')))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"


def test_the_public_names_are_exactly_the_helper() -> None:
    import llama_direct.sdk

    assert llama_direct.sdk.__all__ == ["DirectAuth"]
    assert [name for name in vars(llama_direct.sdk) if not name.startswith("_") and name.isidentifier()
            and getattr(llama_direct.sdk, name).__class__.__name__ in ("type", "function")
            and getattr(getattr(llama_direct.sdk, name), "__module__", "") == "llama_direct.sdk"] == ["DirectAuth"]
