"""The hostile route cases of `test_hostile_routes.py`, against HAProxy in the gate's place (issue 27).

`llama-direct haproxy-config --upstream` renders every lane route HAProxy can check; Debian's haproxy
runs it in front of a real llama-server, behind a counting forwarder. Each body case of the Python
gate's suite is sent with `model` and the route's length field (HAProxy cannot add them) and a token
for that route alone: it is refused without reaching llama-server, or it is in `PASSES` (docs/fleet.md,
"What HAProxy cannot do that the Python gate does"), where the test holds that it still reaches
llama-server, so the table must change when HAProxy starts refusing it. The never-routed paths,
however spelt and with a token naming them, and a grant for one route sent to another, are refused.
HAProxy answers a bare status, not the gate's JSON reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from forwarder import Forwarder
from haproxy_edge import exchange, free_port, haproxy_binary, haproxy_in_gates_place, public_key_file
from hostile_support import CAP, claims, signed
from test_hostile_routes import BODIES, NEVER, VALID, OnRoute

from broker.signing_keys import SigningKey
from llama_direct.lanes import LANE_PREFIX, ROUTES, LaneRoute
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = [pytest.mark.real, pytest.mark.timeout(600)]

MODEL = "smollm2"
AUDIENCE, ISSUER = "fleet", "broker-a"
KEY = SigningKey.generate("ES256")

PASSES: dict[str, str] = {
    **{name: "a refused field whose value is a list or an object passes (json_query finds only scalars)"
       for name in ("responses_lora", "completions_input_extra", "embeddings_native_content",
                    "responses_stored_prompt")},
    **{name: "template internals pass as sent" for name in (
        "messages_template_kwargs", "messages_count_template_kwargs")},
    "responses_item_reference": "llama-server answers an unknown item itself",
    **{name: "llama-server skips a tool that is not a function tool; the gate refuses it" for name in (
        "responses_mcp_server_url", "responses_web_search", "responses_code_interpreter", "messages_bash_tool")},
    **{name: "a sampler field's bound is not checked" for name in (
        "messages_stop_sequences", "responses_repeat_last_n", "completions_logprobs")},
    **{name: "inputs are not counted: the 60 KB body bounds them" for name in (
        "embeddings_too_many_inputs", "embeddings_token_ids", "rerank_too_many_documents")},
    **{name: "the prompt's fit in the slot is left to llama-server" for name in (
        "embeddings_input_past_the_context", "responses_special_tokens_past_the_context",
        "messages_count_too_many_messages")},
}
"""Body cases HAProxy lets through to llama-server, each with the row of docs/fleet.md it falls under."""

BODY_CASES = [case for case in BODIES if isinstance(case.act, OnRoute)]
SPELLED = [b"/direct/Tools", b"/direct/tools/", b"/direct//tools", b"/direct/%74ools",
           b"/direct/v1/responses/../../tools", b"/direct/cors-proxy?url=http://169.254.169.254/",
           b"/direct/v1/%2e%2e/cors-proxy", b"/direct/slots/0;action=save", b"/direct/v1\\..\\lora-adapters",
           b"/direct/./models/load", b"/direct/metrics?format=prometheus", b"/direct/v1/Streams/lookup",
           b"/direct/responses", b"/direct/infill", b"/direct/v1/stream?conv_id=c1"]
"""The spellings `test_hostile_routes.PATHS` tries at the gate, and resume, which HAProxy does not serve."""


def token(route: LaneRoute, **grant: Any) -> str:
    return signed(KEY, claims(iss=ISSUER, aud=AUDIENCE, scope=route.scope, grant={
        "routes": [list(route.key)], "model": MODEL, "max_tokens": CAP, "uses": 1, **grant}))


def body_for(route: LaneRoute, body: dict[str, Any] | bytes) -> bytes:
    """`body` with the `model` and length field HAProxy requires, unless it sets them itself."""
    if isinstance(body, bytes):
        return body
    required: dict[str, Any] = {"model": MODEL, **({route.length_cap: 4} if route.length_cap else {})}
    return json.dumps({**required, **body}).encode()


def request(tok: str, method: bytes, target: bytes, body: bytes) -> bytes:
    return (method + b" " + target + b" HTTP/1.1\r\nHost: lane\r\nConnection: close\r\nAuthorization: Bearer "
            + tok.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


class Lane:
    def __init__(self, port: int, forwarder: Forwarder) -> None:
        self.port = port
        self.forwarder = forwarder

    def reached(self) -> int:
        """Requests that reached llama-server (HAProxy's own health checks left out)."""
        return len(self.forwarder.requests(lambda line: not line.startswith(b"GET /health ")))

    def send(self, raw: bytes) -> tuple[int, bool]:
        """HAProxy's status, and whether the request reached llama-server."""
        before = self.reached()
        status = exchange(self.port, raw)
        time.sleep(0.05)  # a request HAProxy wrongly passed has reached the forwarder by now
        return status, self.reached() > before


@pytest.fixture(scope="module")
def lane(llama_server_binary: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    haproxy_binary()  # skip before llama-server starts where HAProxy is missing
    workdir = tmp_path_factory.mktemp("haproxy-routes")
    public_key = public_key_file(KEY, workdir)
    options = ServerOptions(binary=llama_server_binary, model=model_path, alias=MODEL, max_tokens=2048, parallel=1)
    server = LlamaServer(options, make_runtime_dir())
    server.start()
    try:
        server.wait_ready(timeout=120, show_progress=False)
        key = server.authorization().decode().removeprefix("Bearer ")
        port = free_port()
        with Forwarder(str(server.address)) as forwarder, haproxy_in_gates_place(
            workdir, port, key, "--upstream", f"127.0.0.1:{forwarder.port}", "--public-key-file", str(public_key),
            "--audience", AUDIENCE, "--issuer", ISSUER,
        ):
            lane = Lane(port, forwarder)
            _wait_upstream_up(lane)
            yield lane
    finally:
        server.stop()


def _wait_upstream_up(lane: Lane) -> None:
    """Until HAProxy's health check has marked llama-server up (a good count request is answered)."""
    route = ROUTES["chat_input_tokens"]
    deadline = time.monotonic() + 30
    while lane.send(request(token(route), b"POST", (LANE_PREFIX + route.path).encode(),
                            body_for(route, VALID[route.name])))[0] == 503:
        assert time.monotonic() < deadline, "HAProxy never marked llama-server up"
        time.sleep(0.5)


def test_every_passing_case_is_one_of_the_suites() -> None:
    assert set(PASSES) <= {case.name for case in BODY_CASES}


@pytest.mark.parametrize("case", BODY_CASES, ids=[case.name for case in BODY_CASES])
def test_each_routes_hostile_body_is_refused_before_llama_server_or_is_a_known_pass(lane: Lane, case: Any) -> None:
    act: OnRoute = case.act
    route = ROUTES[act.name]
    status, reached = lane.send(request(token(route), b"POST", (LANE_PREFIX + route.path).encode(),
                                        body_for(route, act.body)))
    if case.name in PASSES:
        assert reached, f"HAProxy now refuses it ({status}): drop it from PASSES and docs/fleet.md"
    else:
        assert (status, reached) == (case.status, False)


@pytest.mark.parametrize(("method", "path"), NEVER)
def test_a_never_routed_path_is_refused_even_with_a_token_naming_it(lane: Lane, method: str, path: str) -> None:
    named = signed(KEY, claims(iss=ISSUER, aud=AUDIENCE, grant={
        "routes": [[method, path]], "model": MODEL, "max_tokens": CAP, "uses": 1}))
    assert lane.send(request(named, method.encode(), (LANE_PREFIX + path).encode(), b"{}")) == (404, False)


@pytest.mark.parametrize("target", SPELLED, ids=[target.decode() for target in SPELLED])
def test_a_never_routed_path_is_refused_however_spelt(lane: Lane, target: bytes) -> None:
    route = ROUTES["responses"]
    assert lane.send(request(token(route), b"POST", target, body_for(route, VALID["responses"]))) == (404, False)


@pytest.mark.parametrize("granted", sorted(VALID))
def test_a_grant_for_one_route_is_refused_on_every_other(lane: Lane, granted: str) -> None:
    for name in sorted(VALID):
        if name != granted:
            route = ROUTES[name]
            sent = request(token(ROUTES[granted]), b"POST", (LANE_PREFIX + route.path).encode(),
                           body_for(route, VALID[name]))
            assert lane.send(sent) == (403, False), (granted, name)


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_valid_body_on_each_route_reaches_llama_server(lane: Lane, name: str) -> None:
    """Embeddings and rerank reach it too; this llama-server was started without `--embeddings` or
    `--reranking`, so it answers them 501 itself."""
    route = ROUTES[name]
    status, reached = lane.send(request(token(route), b"POST", (LANE_PREFIX + route.path).encode(),
                                        body_for(route, VALID[name])))
    assert reached
    assert status == (501 if name in ("embeddings", "rerank") else 200)
