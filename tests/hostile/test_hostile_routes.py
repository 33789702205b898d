"""Hostile requests on the lane routes beyond chat (issue 27), against the real gate code in-process.

Each case is refused with its exact answer before a byte reaches the counting fake llama-server
(`hostile_support.run_case`): every route's over-bound fields, its state by id, its built-in and
remote tools, its images by URL; and every path llama-server serves that no grant may reach,
however it is spelled, even when a token names it. Tokens are minted for the route under test as
`gate_fakes.Harness.token(routes=...)` does, with the route's own scope.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
from gate_fakes import Harness, running_gate
from hostile_support import CAP, Case, exchange, request, run_case, send

from llama_direct.lanes import LANE_PREFIX, ROUTES, LaneRoute

APP = "http://app.test:5173"
TWO_PORT = {"two_port": True, "allowed_origins": [APP]}
HI = [{"role": "user", "content": "hi"}]
IMAGE_URL = "http://169.254.169.254/latest/meta-data/iam"

VALID: dict[str, dict[str, Any]] = {
    "responses": {"input": "hi", "stream": True},
    "messages": {"messages": HI, "max_tokens": 16, "stream": True},
    "completions": {"prompt": "Once upon a time", "stream": True},
    "embeddings": {"input": ["a", "b"]},
    "rerank": {"query": "q", "documents": ["a", "b"]},
    "chat_input_tokens": {"messages": HI},
    "responses_input_tokens": {"input": "hi"},
    "messages_count_tokens": {"messages": HI},
}
"""A body each route forwards, for the control test and as the base of each hostile body."""


def _target(route: LaneRoute) -> bytes:
    return (LANE_PREFIX + route.path).encode()


@dataclass(frozen=True)
class OnRoute:
    """`body` sent to route `name` with a token granting that route alone; the HAProxy suite
    (`test_hostile_haproxy_routes.py`) sends the same body to HAProxy in the gate's place."""

    name: str
    body: dict[str, Any] | bytes

    async def __call__(self, h: Harness) -> Any:
        route = ROUTES[self.name]
        if self.name in ("responses", "messages") and _needs_vision(self.body):
            h.behaviour.vision = True
        token = h.token(scope=route.scope, routes=(route.key,))
        return await exchange(h, request(token, target=_target(route), body=self.body))


def _on(name: str, body: dict[str, Any] | bytes, **fields: Any) -> OnRoute:
    """`body` (with `fields` over it) sent to route `name` with a token granting that route alone."""
    return OnRoute(name, {**body, **fields} if isinstance(body, dict) else body)


def _needs_vision(body: object) -> bool:
    return "image" in json.dumps(body)


def _field(name: str) -> str:
    return f"The field '{name}' is not allowed on the direct lane."


BOUND = "A field is over the bound the direct lane allows for it: see error.param."

BODIES = [
    # the length cap, under each format's own name
    Case("responses_max_output_tokens_over_the_cap", _on("responses", VALID["responses"], max_output_tokens=CAP + 1),
         400, f"max_output_tokens may be at most {CAP} on this token."),
    Case("messages_max_tokens_over_the_cap", _on("messages", VALID["messages"], max_tokens=10**6),
         400, f"max_tokens may be at most {CAP} on this token."),
    Case("completions_n_predict_over_the_cap", _on("completions", VALID["completions"], max_tokens=1, n_predict=10**6),
         400, f"n_predict may be at most {CAP} on this token."),
    Case("completions_max_tokens_as_a_string", _on("completions", VALID["completions"], max_tokens="64"),
         400, f"max_tokens must be an integer from 1 to {CAP}."),
    # the model is the grant's, on every route
    *[Case(f"{name}_another_model", _on(name, VALID[name], model="../models/secret.gguf"), 403,
           "The model is not the one the token was issued for.") for name in VALID],
    # what reaches into the server, refused as on chat
    Case("responses_id_slot", _on("responses", VALID["responses"], id_slot=0), 400, _field("id_slot")),
    Case("responses_lora", _on("responses", VALID["responses"], lora=[{"id": 0, "scale": 1}]), 400, _field("lora")),
    Case("responses_grammar", _on("responses", VALID["responses"], grammar="root ::= x"), 400, _field("grammar")),
    Case("responses_count_n_probs", _on("responses_input_tokens", VALID["responses_input_tokens"], n_probs=10**6),
         400, _field("n_probs")),
    Case("completions_ignore_eos", _on("completions", VALID["completions"], ignore_eos=True), 400,
         _field("ignore_eos")),
    Case("completions_n_keep", _on("completions", VALID["completions"], n_keep=-1), 400, _field("n_keep")),
    Case("completions_input_extra", _on("completions", VALID["completions"], input_extra=[{"filename": "/etc/x"}]),
         400, _field("input_extra")),
    Case("chat_count_id_slot", _on("chat_input_tokens", VALID["chat_input_tokens"], id_slot=0), 400, _field("id_slot")),
    Case("embeddings_native_content", _on("embeddings", {"content": [{"prompt_string": "x"}]}), 400,
         _field("content")),
    # template internals
    Case("messages_template_kwargs", _on("messages", VALID["messages"], chat_template_kwargs={"bos_token": "x"}),
         400, "This chat_template_kwargs key is not allowed on the direct lane: see error.param.", param="bos_token"),
    Case("messages_count_template_kwargs",
         _on("messages_count_tokens", VALID["messages_count_tokens"],
             chat_template_kwargs={"add_generation_prompt": False}),
         400, "This chat_template_kwargs key is not allowed on the direct lane: see error.param.",
         param="add_generation_prompt"),
    Case("messages_thinking_budget", _on("messages", VALID["messages"],
                                         thinking={"type": "enabled", "budget_tokens": 10**9}),
         400, BOUND, param="thinking"),
    # state by id
    Case("responses_previous_response_id", _on("responses", VALID["responses"], previous_response_id="resp_other"),
         400, _field("previous_response_id")),
    Case("responses_conversation", _on("responses", VALID["responses"], conversation="conv_other"),
         400, _field("conversation")),
    Case("responses_item_reference", _on("responses", {"input": [{"type": "item_reference", "id": "msg_other"}]}),
         400, "input[0]: this kind of item is not accepted on the direct lane."),
    Case("responses_stored_prompt", _on("responses", VALID["responses"], prompt={"id": "pmpt_other"}),
         400, _field("prompt")),
    # built-in and remote tools
    Case("responses_mcp_server_url",
         _on("responses", VALID["responses"],
             tools=[{"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:8080/tools"}]),
         400, "tools[0]: only function tools are accepted on the direct lane, not built-in or remote ones."),
    Case("responses_web_search", _on("responses", VALID["responses"], tools=[{"type": "web_search"}]),
         400, "tools[0]: only function tools are accepted on the direct lane, not built-in or remote ones."),
    Case("responses_code_interpreter",
         _on("responses", VALID["responses"], tools=[{"type": "function", "name": "f"}, {"type": "code_interpreter"}]),
         400, "tools[1]: only function tools are accepted on the direct lane, not built-in or remote ones."),
    Case("messages_bash_tool", _on("messages", VALID["messages"], tools=[{"type": "bash_20250124", "name": "bash"}]),
         400, "tools[0]: only function tools are accepted on the direct lane, not built-in or remote ones."),
    # images by URL, which llama-server would fetch itself
    Case("responses_image_by_url",
         _on("responses", {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE_URL}]}]}),
         400, "input[0].content[0]: only data: image URLs are accepted."),
    Case("messages_image_by_url",
         _on("messages", VALID["messages"], messages=[{"role": "user", "content": [
             {"type": "image", "source": {"type": "url", "url": IMAGE_URL}}]}]),
         400, "messages[0].content[0]: only data: image URLs are accepted."),
    # bounds of each format's own fields
    Case("messages_stop_sequences", _on("messages", VALID["messages"], stop_sequences=["x"] * 17),
         400, BOUND, param="stop_sequences"),
    Case("responses_repeat_last_n", _on("responses", VALID["responses"], repeat_last_n=2**31 - 1),
         400, BOUND, param="repeat_last_n"),
    Case("completions_logprobs", _on("completions", VALID["completions"], logprobs=10**6), 400, BOUND,
         param="logprobs"),
    Case("completions_many_prompts", _on("completions", {"prompt": ["a"] * 64}), 400, "prompt must be a string."),
    Case("completions_token_ids", _on("completions", {"prompt": [[1, 2, 3]]}), 400, "prompt must be a string."),
    Case("embeddings_too_many_inputs", _on("embeddings", {"input": ["x"] * 65}), 400,
         "input must be a string or a non-empty list of at most 64 strings."),
    Case("embeddings_token_ids", _on("embeddings", {"input": [[1, 2, 3]]}), 400,
         "input must be a string or a non-empty list of at most 64 strings."),
    Case("embeddings_input_past_the_context", _on("embeddings", {"input": "x" * (512 * 16 + 1)}), 400,
         "The prompt cannot fit this model's context of 512 tokens: it holds too much text."),
    Case("rerank_negative_top_n", _on("rerank", VALID["rerank"], top_n=-1), 400,
         "top_n must lie between 1 and the number of documents."),
    Case("rerank_too_many_documents", _on("rerank", {"query": "q", "documents": ["d"] * 65}), 400,
         "documents must be a non-empty list of at most 64 strings."),
    Case("responses_special_tokens_past_the_context",
         _on("responses", {"input": "<|im_start|>" * 513}), 400,
         "The prompt cannot fit this model's context of 512 tokens: it holds too many special-token strings."),
    Case("messages_count_too_many_messages", _on("messages_count_tokens", {"messages": HI * 513}), 400,
         "The prompt cannot fit this model's context of 512 tokens: it holds too many messages."),
]

NO_ROUTE = "No such route on the direct lane."
DOT_SEGMENTS = "The path must not hold '.' or '..' segments."

NEVER = [
    ("GET", "/tools"), ("POST", "/tools"), ("GET", "/cors-proxy"), ("POST", "/cors-proxy"), ("GET", "/slots"),
    ("POST", "/slots/0"), ("GET", "/lora-adapters"), ("POST", "/lora-adapters"), ("POST", "/props"),
    ("GET", "/props"), ("GET", "/metrics"), ("POST", "/models/load"), ("POST", "/models/unload"),
    ("GET", "/models/sse"), ("POST", "/models"), ("DELETE", "/models"), ("POST", "/v1/streams/lookup"),
]
"""What llama-server serves and no grant reaches (`lanes.NEVER_ROUTED`), by method."""


def _granted(method: str, path: str, target: bytes | None = None) -> Any:
    """A token that names the never-routed path itself, sent to it (or to `target`)."""
    async def act(h: Harness) -> Any:
        token = h.token(scope="chat", routes=((method, path),))
        body = b"{}" if method == "POST" else b""
        return await exchange(h, request(token, method=method.encode(), target=target or (LANE_PREFIX + path).encode(),
                                         body=body))

    return act


def _spelled(target: bytes, method: bytes = b"POST") -> Any:
    async def act(h: Harness) -> Any:
        token = h.token(scope="responses", routes=(ROUTES["responses"].key,))
        return await exchange(h, request(token, method=method, target=target, body=b"{}"))

    return act


PATHS = [
    *[Case(f"never_{method.lower()}_{path.strip('/').replace('/', '_').replace('-', '_')}_even_when_granted",
           _granted(method, path), 404, NO_ROUTE) for method, path in NEVER],
    Case("tools_upper_case", _spelled(b"/direct/Tools"), 404, NO_ROUTE),
    Case("tools_trailing_slash", _spelled(b"/direct/tools/"), 400, "The path must not end with a slash."),
    Case("tools_double_slash", _spelled(b"/direct//tools"), 400, "The path must not hold empty segments ('//')."),
    Case("tools_percent_encoded", _spelled(b"/direct/%74ools"), 400, "The path must not be percent-encoded."),
    Case("tools_behind_dot_dot", _spelled(b"/direct/v1/responses/../../tools"), 400, DOT_SEGMENTS),
    Case("cors_proxy_with_a_url", _spelled(b"/direct/cors-proxy?url=http://169.254.169.254/", b"GET"), 404,
         NO_ROUTE),
    Case("cors_proxy_behind_encoded_dots", _spelled(b"/direct/v1/%2e%2e/cors-proxy"), 400,
         "The path must not hold percent-encoded dots, slashes or backslashes."),
    Case("slots_save_behind_a_semicolon", _spelled(b"/direct/slots/0;action=save"), 404, NO_ROUTE),
    Case("lora_adapters_behind_a_backslash", _spelled(b"/direct/v1\\..\\lora-adapters"), 400,
         "The path must not hold a backslash."),
    Case("models_load_behind_dot", _spelled(b"/direct/./models/load"), 400, DOT_SEGMENTS),
    Case("metrics_with_a_query", _spelled(b"/direct/metrics?format=prometheus", b"GET"), 404, NO_ROUTE),
    Case("streams_lookup_upper_case", _spelled(b"/direct/v1/Streams/lookup"), 404, NO_ROUTE),
    Case("responses_raw_alias_off_v1", _spelled(b"/direct/responses"), 404, NO_ROUTE),
    Case("infill_is_not_a_lane_route", _spelled(b"/direct/infill"), 404, NO_ROUTE),
    Case("private_socket_tools", send(lambda h: request(h.token(), method=b"GET", target=b"/tools"),
                                      where="private"), 404, "Nothing is served at this path."),
    Case("private_socket_cors_proxy", send(lambda h: request(h.token(), method=b"GET", target=b"/cors-proxy"),
                                           where="private"), 404, "Nothing is served at this path."),
]

ROUTE_CASES = BODIES + PATHS


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", ROUTE_CASES, ids=[case.name for case in ROUTE_CASES])
def test_hostile_request_on_a_route_is_refused_and_never_reaches_llama_server(case: Case) -> None:
    run_case(case)


def test_the_case_names_are_unique() -> None:
    assert len({case.name for case in ROUTE_CASES}) == len(ROUTE_CASES)


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_valid_body_on_each_route_reaches_its_path_shaped(name: str) -> None:
    """The control case for each route: forwarded once, to its own path, with the grant's model."""
    route = ROUTES[name]

    async def main() -> None:
        async with running_gate() as h:
            token = h.token(scope=route.scope, routes=(route.key,))
            response = await exchange(h, request(token, target=_target(route), body=VALID[name]))
            assert response.status == 200
            (forwarded,) = h.upstream_requests
            assert (forwarded.method, forwarded.target) == ("POST", route.path)
            sent = json.loads(forwarded.body)
            assert sent["model"] == "smollm2"
            if route.length_cap:
                assert sent[route.length_cap] <= CAP
            else:
                assert not {"max_tokens", "max_output_tokens", "n_predict"} & sent.keys()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_the_anthropic_sdks_headers_pass_a_preflight_and_never_reach_llama_server() -> None:
    """`x-api-key` and `anthropic-version` are allowed in a two-port preflight; the forwarded head is
    still built from an allow-list, so neither (nor the key's value) reaches llama-server."""
    route = ROUTES["messages"]

    async def main() -> None:
        async with running_gate(**TWO_PORT) as h:
            preflight = (b"OPTIONS " + _target(route) + b" HTTP/1.1\r\nHost: gate\r\nOrigin: " + APP.encode()
                         + b"\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: "
                         b"authorization, content-type, x-api-key, anthropic-version, anthropic-beta\r\n\r\n")
            answer = await exchange(h, preflight)
            assert answer.status == 204
            (allowed,) = answer.header(b"access-control-allow-headers")
            assert {b"x-api-key", b"anthropic-version"} <= {name.strip() for name in allowed.split(b",")}
            token = h.token(scope=route.scope, routes=(route.key,), origin=APP)
            extra = (b"Origin: " + APP.encode() + b"\r\nX-Api-Key: sk-ant-client\r\nAnthropic-Version: 2023-06-01\r\n"
                     b"Anthropic-Beta: tools-2024\r\n")
            response = await exchange(h, request(token, target=_target(route), body=VALID["messages"], headers=extra))
            assert response.status == 200
            (forwarded,) = h.upstream_requests
            names = {name.lower() for name, _ in forwarded.headers}
            assert not names & {b"x-api-key", b"anthropic-version", b"anthropic-beta", b"origin"}
            assert all(b"sk-ant-client" not in value for _, value in forwarded.headers)

    asyncio.run(asyncio.wait_for(main(), 20))
