"""The unchanged OpenAI and Anthropic Python SDKs holding whole conversations through
`llama_direct.sdk.DirectAuth`, against the real stack: the lane (each route on a grant for that route),
the SDK's retry on a fresh grant, and the fallback with the lane off. The Anthropic SDK takes only an
httpx2 client; the OpenAI SDK takes either."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import anthropic
import httpx
import httpx2
import openai
import pytest
from stack import Stack, run_stack

from llama_direct.sdk import DirectAuth

pytestmark = pytest.mark.real

LONG = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def _turns() -> Iterator[list[dict[str, str]]]:
    """Three turns of one conversation: each asks with the history so far."""
    messages: list[dict[str, str]] = []
    for question in ("Say hello.", "Name a colour.", "Name a fruit."):
        messages.append({"role": "user", "content": question})
        yield messages
        messages.append({"role": "assistant", "content": "ok"})


class Seen:
    """The paths each request of one httpx client went to (after the helper rewrote them)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> None:
        self.paths.append(request.url.path)

    async def async_hook(self, request: httpx.Request) -> None:
        self(request)


def _client(stack: Stack, seen: Seen, max_retries: int = 0, **http: object) -> openai.OpenAI:
    auth = DirectAuth(stack.base, stack.access_token)
    http_client = httpx.Client(auth=auth, event_hooks={"request": [seen]}, timeout=120, **http)  # type: ignore[arg-type]
    return openai.OpenAI(base_url=stack.base + "/v1", api_key="unused", http_client=http_client,
                         max_retries=max_retries)


def _async_client(stack: Stack, seen: Seen) -> openai.AsyncOpenAI:
    auth = DirectAuth(stack.base, stack.access_token)
    http_client = httpx.AsyncClient(auth=auth, event_hooks={"request": [seen.async_hook]}, timeout=120)
    return openai.AsyncOpenAI(base_url=stack.base + "/v1", api_key="unused", http_client=http_client, max_retries=0)


def _three_turns_sync(client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    for number, messages in enumerate(_turns()):
        if number % 2:
            stream = client.chat.completions.create(model=model, messages=messages, stream=True, max_tokens=12)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        else:
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=12)
            text = reply.choices[0].message.content or ""
        assert text.strip(), f"turn {number} came back empty"


async def _three_turns_async(unopened: openai.AsyncOpenAI) -> None:
    async with unopened as client:
        await _async_turns(client)


async def _async_turns(client: openai.AsyncOpenAI) -> None:
    model = (await client.models.list()).data[0].id
    for number, messages in enumerate(_turns()):
        if number % 2 == 0:
            stream = await client.chat.completions.create(model=model, messages=messages, stream=True, max_tokens=12)
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        else:
            reply = await client.chat.completions.create(model=model, messages=messages, max_tokens=12)
            text = reply.choices[0].message.content or ""
        assert text.strip(), f"turn {number} came back empty"


def test_three_turns_on_one_sync_client_through_the_lane(stack: Stack) -> None:
    seen = Seen()
    with _client(stack, seen) as client:
        _three_turns_sync(client)
    assert seen.paths == ["/v1/models"] + ["/direct-stream", "/direct/v1/chat/completions"] * 3


def test_three_turns_on_one_async_client_through_the_lane(stack: Stack) -> None:
    seen = Seen()
    asyncio.run(_three_turns_async(_async_client(stack, seen)))
    assert seen.paths == ["/v1/models"] + ["/direct-stream", "/direct/v1/chat/completions"] * 3


def test_the_first_streamed_chunk_arrives_before_the_last_is_generated(stack: Stack) -> None:
    """Streamed, not buffered: the SDK sees content chunks spread over the generation's time.

    (The gate's `/health` is cached for half a second and the broker reads it at negotiation, so
    llama-server's busy slots, asked at the first token, may be a snapshot from before the stream.)
    """
    arrivals: list[float] = []
    with _client(stack, Seen()) as client:
        stream = client.chat.completions.create(model=client.models.list().data[0].id, messages=LONG, stream=True,
                                                max_tokens=200)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
    contents = len(arrivals)
    assert contents > 20
    assert arrivals[-1] - arrivals[0] > 0.05, "every chunk arrived at once: the stream was buffered"
    assert arrivals[contents // 2] - arrivals[0] > 0.02
    deadline = time.monotonic() + 5
    while stack.busy_slots() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.busy_slots() == 0, "the slot stayed busy after the stream ended"


class FailFirstLaneAnswer(httpx.HTTPTransport):
    """Sends every request for real, but hands the SDK a 502 for the first lane answer (its token is spent)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if self.failed or not request.url.path.startswith("/direct/"):
            return response
        self.failed = True
        response.read()
        response.close()
        return httpx.Response(502, json={"error": {"message": "injected", "code": 502}}, request=request)


def test_the_sdks_retry_after_a_lane_5xx_gets_a_fresh_token_and_succeeds(stack: Stack) -> None:
    seen = Seen()
    transport = FailFirstLaneAnswer()
    with _client(stack, seen, max_retries=1, transport=transport) as client:
        reply = client.chat.completions.create(model=client.models.list().data[0].id, messages=next(_turns()),
                                               max_tokens=8)
    assert transport.failed and reply.choices[0].message.content
    assert seen.paths == ["/v1/models"] + ["/direct-stream", "/direct/v1/chat/completions"] * 2


def test_a_model_the_server_does_not_have_is_the_sdks_bad_request(stack: Stack) -> None:
    with _client(stack, Seen()) as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="no-such-model", messages=next(_turns()))


def test_a_wrong_access_token_is_the_sdks_authentication_error(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base + "/v1", api_key="unused", max_retries=0,
                           http_client=httpx.Client(auth=DirectAuth(stack.base, "wrong-token"), timeout=30))
    with client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="x", messages=next(_turns()))


def test_with_the_lane_off_three_turns_take_the_fallback(llama_server_binary: Path, model_path: Path) -> None:
    with run_stack("--llama-server", str(llama_server_binary), env={"UNSLOTH_DIRECT_STREAM": "0"}) as off:
        seen = Seen()
        with _client(off, seen) as client:
            _three_turns_sync(client)
        assert seen.paths == ["/v1/models"] + ["/direct-stream", "/v1/chat/completions"] * 3
        seen_async = Seen()
        asyncio.run(_three_turns_async(_async_client(off, seen_async)))
        assert seen_async.paths == seen.paths


# Routes besides chat: each request negotiates a grant for its own route.

ASK: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Say hello."}]
GREEDY = 0.0
"""llama-server 11434 sends no `message_start` when a Messages stream's first token is part of a
character (an emoji: 8 of 60 sampled "Say hello." streams, straight from llama-server), and the SDK's
`get_final_message` then fails; greedy sampling keeps this reply's first token whole. (This SDK's
`messages.stream` has no `temperature` argument: the Messages body field goes through `extra_body`.)"""


def _anthropic(stack: Stack, seen: Seen) -> anthropic.Anthropic:
    http_client = httpx2.Client(auth=DirectAuth(stack.base, stack.access_token), event_hooks={"request": [seen]},
                                timeout=120)
    return anthropic.Anthropic(base_url=stack.base, api_key="unused", http_client=http_client, max_retries=0)


def _async_anthropic(stack: Stack, seen: Seen) -> anthropic.AsyncAnthropic:
    http_client = httpx2.AsyncClient(auth=DirectAuth(stack.base, stack.access_token),
                                     event_hooks={"request": [seen.async_hook]}, timeout=120)
    return anthropic.AsyncAnthropic(base_url=stack.base, api_key="unused", http_client=http_client, max_retries=0)


def test_the_anthropic_sdk_streams_a_message_and_counts_tokens_through_the_lane(stack: Stack) -> None:
    model = stack.negotiate()["model"]
    seen = Seen()
    with _anthropic(stack, seen) as client:
        for _ in range(2):  # one client, a fresh grant each time
            with client.messages.stream(model=model, max_tokens=12, messages=ASK,
                                        extra_body={"temperature": GREEDY}) as stream:
                text = "".join(stream.text_stream)
                final = stream.get_final_message()
            assert text.strip() and final.usage.output_tokens > 0
        count = client.messages.count_tokens(model=model, messages=ASK)
        assert count.input_tokens > 0
    assert seen.paths == ["/direct-stream", "/direct/v1/messages"] * 2 + [
        "/direct-stream", "/direct/v1/messages/count_tokens"]


def test_the_async_anthropic_sdk_streams_and_counts_through_the_lane(stack: Stack) -> None:
    model = stack.negotiate()["model"]
    seen = Seen()

    async def main() -> None:
        async with _async_anthropic(stack, seen) as client:
            async with client.messages.stream(model=model, max_tokens=12, messages=ASK,
                                              extra_body={"temperature": GREEDY}) as stream:
                text = "".join([part async for part in stream.text_stream])
            assert text.strip()
            assert (await client.messages.count_tokens(model=model, messages=ASK)).input_tokens > 0

    asyncio.run(main())
    assert seen.paths == ["/direct-stream", "/direct/v1/messages", "/direct-stream", "/direct/v1/messages/count_tokens"]


@pytest.mark.parametrize("library", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_the_openai_sdks_responses_and_completions_go_through_the_lane(stack: Stack, library: ModuleType) -> None:
    seen = Seen()
    http_client = library.Client(auth=DirectAuth(stack.base, stack.access_token),
                                 event_hooks={"request": [seen]}, timeout=120)
    with openai.OpenAI(base_url=stack.base + "/v1", api_key="unused", http_client=http_client,
                       max_retries=0) as client:
        model = stack.negotiate()["model"]
        events = list(client.responses.create(model=model, input="Say hello.", max_output_tokens=12, stream=True))
        assert any(event.type == "response.output_text.delta" for event in events)
        completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8)
        assert completion.choices[0].text
    assert seen.paths == ["/direct-stream", "/direct/v1/responses", "/direct-stream", "/direct/v1/completions"]
