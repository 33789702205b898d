"""The lane routes beyond chat against the real llama-server 11434 and SmolLM2, through the whole stack.

Each request goes to the public port's `/direct/...` with a token granted for that route alone:
negotiated with `{"route": name}` where the broker takes it, otherwise minted with the broker's own
signing key (read from its data dir) for the issuer, audience and model a negotiation names, so the
gate checks exactly what it checks for a negotiated token.

Embeddings need a model started with `--embeddings` (and a pooling type: SmolLM2's is none, which
llama-server refuses for the OpenAI format, so `--pooling mean`), and rerank one started with `--reranking`:
each gets a stack of its own with that flag passed through to llama-server. No small reranking
model is packaged: SmolLM2 is a chat model, and started with `--reranking` llama-server still
answers in the rerank format, with scores that mean nothing. So the rerank test checks the lane's
route, bounds and answer shape against the real server, never the ranking itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from stack import Stack, run_stack

from broker.signing_keys import SigningKey
from llama_direct.lanes import LANE_PREFIX, RESUME, ROUTES
from llama_direct.tokens import Grant, mint

pytestmark = pytest.mark.real

HI = [{"role": "user", "content": "Say hi."}]


def _signing_key_of(stack: Stack) -> SigningKey:
    (pem,) = [p for p in (stack.data_dir / "keys").glob("*.pem") if not p.name.startswith("tls-")]
    return SigningKey.from_private_key(serialization.load_pem_private_key(pem.read_bytes(), None))


def token_for(stack: Stack, name: str, *, conversation_id: str | None = None) -> str:
    """A token for route `name`: negotiated for it when the broker takes a route, else minted alike."""
    route = ROUTES[name]
    if conversation_id is None:
        answer = httpx.post(f"{stack.base}/direct-stream", json={"route": name}, timeout=10, verify=False,
                            headers={"Authorization": f"Bearer {stack.access_token}"})
        granted = answer.json() if answer.status_code == 200 else {}
        if granted.get("supported") and [list(route.key)] == granted["grant"]["routes"]:
            return str(granted["token"])
    negotiated = stack.negotiate()
    claims = jwt.decode(negotiated["token"], options={"verify_signature": False})
    grant = Grant(routes=(route.key,), model=claims["grant"]["model"], max_tokens=claims["grant"]["max_tokens"],
                  conversation_id=conversation_id)
    return mint(_signing_key_of(stack), issuer=claims["iss"], audience=claims["aud"], subject=claims["sub"],
                scope=route.scope, grant=grant, now=time.time()).token


def lane(stack: Stack, name: str, body: dict, *, token: str | None = None, headers: dict | None = None,
         path: str | None = None) -> httpx.Response:
    route = ROUTES[name]
    sent = {"Authorization": f"Bearer {token or token_for(stack, name)}", **(headers or {})}
    return httpx.post(f"{stack.base}{LANE_PREFIX}{path or route.path}", json=body, headers=sent, timeout=120,
                      verify=False)


def events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("event: ") for line in response.text.splitlines() if line.startswith("event: ")]


def test_completions_through_the_lane(stack: Stack) -> None:
    response = lane(stack, "completions", {"prompt": "Once upon a time", "max_tokens": 8})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "text_completion" and isinstance(answer["choices"][0]["text"], str)
    assert answer["usage"]["completion_tokens"] <= 8


def test_completions_over_the_cap_is_refused_by_the_gate(stack: Stack) -> None:
    response = lane(stack, "completions", {"prompt": "x", "n_predict": 10**6})
    assert (response.status_code, response.json()["error"]["reason"]) == (400, "length_over_cap")


def test_responses_streams_through_the_lane(stack: Stack) -> None:
    response = lane(stack, "responses", {"input": "Say hi.", "stream": True, "max_output_tokens": 8})
    assert response.status_code == 200, response.text
    seen = events(response)
    assert seen[0] == "response.created" and "response.output_text.delta" in seen
    assert seen[-1] == "response.completed"


def test_responses_resume_through_llama_servers_stream_sessions(stack: Stack) -> None:
    """llama-server tees a Responses stream into the conversation's session as it does chat's, so a
    resume from offset 0 reads the same bytes."""
    conversation = f"routes-real-{time.time_ns()}"
    token = token_for(stack, "responses", conversation_id=conversation)
    first = lane(stack, "responses", {"input": "Count to five.", "stream": True, "max_output_tokens": 12},
                 token=token, headers={"X-Conversation-Id": conversation})
    assert first.status_code == 200, first.text
    claims = jwt.decode(token, options={"verify_signature": False})
    grant = Grant(routes=(RESUME.key,), model=claims["grant"]["model"], max_tokens=claims["grant"]["max_tokens"],
                  conversation_id=conversation)
    resume = mint(_signing_key_of(stack), issuer=claims["iss"], audience=claims["aud"], subject=claims["sub"],
                  scope="resume", grant=grant, now=time.time()).token
    again = httpx.get(f"{stack.base}{LANE_PREFIX}{RESUME.path}?conv_id={conversation}&from=0", timeout=60,
                      headers={"Authorization": f"Bearer {resume}"}, verify=False)
    assert again.status_code == 200 and again.content == first.content


def test_responses_previous_response_id_is_refused_before_llama_server(stack: Stack) -> None:
    response = lane(stack, "responses", {"input": "hi", "previous_response_id": "resp_someone_elses"})
    assert (response.status_code, response.json()["error"]["reason"]) == (400, "field_not_allowed")


def test_messages_streams_through_the_lane_with_the_anthropic_sdks_headers(stack: Stack) -> None:
    headers = {"x-api-key": "sk-ant-not-forwarded", "anthropic-version": "2023-06-01"}
    response = lane(stack, "messages", {"messages": HI, "max_tokens": 8, "stream": True}, headers=headers)
    assert response.status_code == 200, response.text
    seen = events(response)
    # llama-server 11434 leaves out message_start when a stream opens on part of a character (docs/sdks.md):
    # the gate relays its bytes as they are, so that habit is llama-server's, not a refusal of the lane's.
    assert seen[0] in ("message_start", "content_block_start"), seen[:3]
    assert "content_block_delta" in seen and seen[-1] == "message_stop"


@pytest.mark.parametrize(("name", "body"), [
    ("chat_input_tokens", {"messages": HI}),
    ("responses_input_tokens", {"input": "Say hi."}),
    ("messages_count_tokens", {"messages": HI}),
])
def test_token_counting_through_the_lane(stack: Stack, name: str, body: dict) -> None:
    response = lane(stack, name, body)
    assert response.status_code == 200, response.text
    assert response.json()["input_tokens"] > 0


def test_a_token_for_one_route_does_not_reach_another(stack: Stack) -> None:
    response = lane(stack, "messages", {"messages": HI}, token=token_for(stack, "messages_count_tokens"))
    assert response.status_code in (403, 404)


@pytest.fixture(scope="module")
def embeddings_stack(llama_server_binary: Path, model_path: Path) -> Iterator[Stack]:
    with run_stack("--llama-server", str(llama_server_binary), "--", "--embeddings", "--pooling", "mean") as running:
        yield running


def test_embeddings_through_the_lane_on_a_model_started_with_embeddings(embeddings_stack: Stack) -> None:
    response = lane(embeddings_stack, "embeddings", {"input": ["a cat", "a dog"], "encoding_format": "float"})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == [0, 1] and len(data[0]["embedding"]) > 0


def test_embeddings_over_their_count_are_refused_by_the_gate(embeddings_stack: Stack) -> None:
    response = lane(embeddings_stack, "embeddings", {"input": ["x"] * 65})
    assert (response.status_code, response.json()["error"]["reason"]) == (400, "bad_input")


@pytest.fixture(scope="module")
def rerank_stack(llama_server_binary: Path, model_path: Path) -> Iterator[Stack]:
    with run_stack("--llama-server", str(llama_server_binary), "--", "--reranking") as running:
        yield running


def test_rerank_through_the_lane_answers_in_the_rerank_format(rerank_stack: Stack) -> None:
    """SmolLM2 is no reranker: only the route and the answer's shape are checked, not the order."""
    body = {"query": "what is a cat", "documents": ["a cat is an animal", "paris is in france"], "top_n": 1}
    response = lane(rerank_stack, "rerank", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "list" and len(answer["results"]) == 1
    assert answer["results"][0]["index"] in (0, 1) and "relevance_score" in answer["results"][0]
    refused = lane(rerank_stack, "rerank", {**body, "top_n": -1})
    assert (refused.status_code, refused.json()["error"]["reason"]) == (400, "bad_input")
    assert json.loads(refused.content)["error"]["message"] == "top_n must lie between 1 and the number of documents."
