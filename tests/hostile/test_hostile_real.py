"""A selection of the hostile cases against the whole stack, with the REAL llama-server behind it.

`serve --upstream` puts the gate in front of a llama-server this module starts itself, with a
counting TCP forwarder (tests/real/forwarder.py) between them: every connection the gate opens to
llama-server passes the forwarder, which records its request line. So each case proves, with the
real binary, that a refused request never reached it; the last case is the control that shows a
good request does.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from forwarder import Forwarder
from recorded_lane import stack_in_front
from stack import Stack

from llama_launcher.server_args import RouterSource, ServerOptions

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

ALIAS = "smollm2-hostile"
CAP = 16
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
GATE_OWN = (b"GET /health ", b"GET /slots ", b"GET /props ", b"GET /v1/models HTTP/")
"""The gate's own polls (a router's model list is `GET /v1/models`); no lane route is one of them."""


class Lane:
    def __init__(self, stack: Stack, forwarder: Forwarder) -> None:
        self.stack = stack
        self.forwarder = forwarder
        self.port = int(stack.base.rsplit(":", 1)[1])

    def token(self) -> str:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            grant = self.stack.negotiate(max_tokens=CAP)
            if grant.get("supported"):
                return str(grant["token"])
            time.sleep(0.1)
        raise AssertionError("negotiation never became supported")

    def forwarded(self) -> list[bytes]:
        """The request lines llama-server received, apart from the gate's own health polls."""
        return self.forwarder.requests(lambda line: not line.startswith(GATE_OWN))

    def exchange(self, raw: bytes) -> tuple[int, bytes]:
        """Send `raw` on a fresh connection; read to EOF (every request here says Connection: close)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
            sock.sendall(raw)
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        status = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
        assert status is not None, data[:200]
        return int(status.group(1)), body


@pytest.fixture(scope="module", params=["single", "router"])
def lane(request: pytest.FixtureRequest, llama_server_binary: Path, model_path: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    """The same cases against one llama-server and against a router serving the model as `ALIAS`."""
    router = None
    if request.param == "router":
        preset = tmp_path_factory.mktemp("preset") / "models.ini"
        preset.write_text(f"[{ALIAS}]\nmodel = {model_path}\n\n[other]\nmodel = {model_path}\nctx-size = 1024\n")
        router = RouterSource("preset", preset)
    options = ServerOptions(binary=llama_server_binary, model=model_path, alias=ALIAS, max_tokens=2048, router=router)
    # A router's model is loaded before the cases, so that no case pays (or is charged) a load.
    preload = None if router is None else lambda server, key: _load(str(server.address), key, ALIAS)
    with stack_in_front(options, "--max-tokens", "512", "--burst", "100",  # one negotiation per case
                        before=preload) as (stack, forwarder, _):
        yield Lane(stack, forwarder)


def _load(socket_path: str, key: str, name: str) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), timeout=10) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert client.post("http://router/models/load", json={"model": name}, headers=headers).status_code == 200
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listing = client.get("http://router/v1/models", headers=headers).json()["data"]
            if any(m["id"] == name and m["status"]["value"] == "loaded" for m in listing):
                return
            time.sleep(0.2)
    raise AssertionError(f"{name} did not load")


def request(token: str | None, *, method: bytes = b"POST", target: bytes = b"/direct/v1/chat/completions",
            body: bytes | dict[str, Any] = CHAT, headers: bytes = b"") -> bytes:
    raw_body = json.dumps(body).encode() if isinstance(body, dict) else body
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
    return (method + b" " + target + b" HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n" + auth
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(raw_body) + headers + b"\r\n"
            + raw_body)


PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000185d114090000000049454e44ae426082")
IMAGE = {"messages": [{"role": "user", "content": [
    {"type": "text", "text": "what is it?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}},
]}]}

CASES: list[tuple[str, Callable[[str], bytes], int, str]] = [
    ("alg_none", lambda t: request("eyJhbGciOiJub25lIn0.e30."), 401, "The token's signing algorithm is not allowed."),
    ("token_in_the_query", lambda t: request(None, target=b"/direct/v1/chat/completions?access_token=" + t.encode()),
     401, "A bearer token is required."),
    ("id_slot", lambda t: request(t, body={**CHAT, "id_slot": 0}), 400,
     "The field 'id_slot' is not allowed on the direct lane."),
    ("max_tokens_over_the_cap", lambda t: request(t, body={**CHAT, "max_tokens": CAP + 1}), 400,
     f"max_tokens may be at most {CAP} on this token."),
    ("model_mismatch", lambda t: request(t, body={**CHAT, "model": "other"}), 403,
     "The model is not the one the token was issued for."),
    ("invalid_json", lambda t: request(t, body=b'{"messages":'), 400, "The body is not valid UTF-8 JSON."),
    ("image_to_a_model_without_vision", lambda t: request(t, body=IMAGE), 400, "This model does not accept images."),
    ("dot_dot_to_slots", lambda t: request(t, target=b"/direct/v1/chat/completions/../../slots"), 400,
     "The path must not hold '.' or '..' segments."),
    ("percent_encoded_dots", lambda t: request(t, target=b"/direct/v1/%2e%2e/props"), 400,
     "The path must not hold percent-encoded dots, slashes or backslashes."),
    ("lane_slots", lambda t: request(t, method=b"GET", target=b"/direct/slots", body=b""), 404,
     "No such route on the direct lane."),
    ("lane_post_props", lambda t: request(t, target=b"/direct/props"), 404, "No such route on the direct lane."),
    ("lane_metrics", lambda t: request(t, method=b"GET", target=b"/direct/metrics", body=b""), 404,
     "No such route on the direct lane."),
    ("content_length_and_transfer_encoding", lambda t: request(t, headers=b"Transfer-Encoding: chunked\r\n"), 400,
     "Content-Length and Transfer-Encoding must not both be sent."),
    ("obs_fold", lambda t: request(t, headers=b"X-A: 1\r\n folded\r\n"), 400, "Folded header lines are not accepted."),
    ("foreign_origin", lambda t: request(t, headers=b"Origin: http://evil.test\r\n"), 403,
     "This token was issued for use without an Origin header."),
    # The router's management endpoints, and raw spellings of them: never routed by the lane.
    ("router_load", lambda t: request(t, target=b"/direct/models/load", body={"model": ALIAS}), 404,
     "No such route on the direct lane."),
    ("router_unload", lambda t: request(t, target=b"/direct/models/unload", body={"model": ALIAS}), 404,
     "No such route on the direct lane."),
    # The gate's own unload (the broker's, on its private socket only): the public port never serves it.
    ("gate_private_unload", lambda t: request(t, target=b"/unload", body={"model": ALIAS}), 405,
     "Method not allowed."),
    ("lane_gate_unload", lambda t: request(t, target=b"/direct/unload", body={"model": ALIAS}), 404,
     "No such route on the direct lane."),
    ("router_sse", lambda t: request(t, method=b"GET", target=b"/direct/models/sse", body=b""), 404,
     "No such route on the direct lane."),
    ("router_add", lambda t: request(t, target=b"/direct/models", body={"model": "/etc/passwd"}), 404,
     "No such route on the direct lane."),
    ("router_remove", lambda t: request(t, method=b"DELETE", target=b"/direct/models", body=b""), 404,
     "No such route on the direct lane."),
    ("router_list", lambda t: request(t, method=b"GET", target=b"/direct/v1/models", body=b""), 404,
     "No such route on the direct lane."),
    ("router_load_encoded", lambda t: request(t, target=b"/direct/%6dodels/load"), 400,
     "__ANY__"),
    ("router_load_upper", lambda t: request(t, target=b"/direct/MODELS/LOAD"), 404, "__ANY__"),
    ("router_load_double_slash", lambda t: request(t, target=b"/direct//models/load"), 400, "__ANY__"),
    ("router_load_dot_dot", lambda t: request(t, target=b"/direct/v1/chat/completions/../../models/load"), 400,
     "The path must not hold '.' or '..' segments."),
    ("router_load_query", lambda t: request(t, target=b"/direct/v1/chat/completions?autoload=true"), 400,
     "__ANY__"),
    ("foreign_conversation", lambda t: request(t, headers=b"X-Conversation-Id: someone-else\r\n"), 403,
     "This token names no conversation: drop X-Conversation-Id."),
]


@pytest.mark.parametrize(("name", "build", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_refused_and_never_reached_the_real_llama_server(
    lane: Lane, name: str, build: Callable[[str], bytes], status: int, message: str
) -> None:
    before = lane.forwarded()
    answer_status, body = lane.exchange(build(lane.token()))
    found = json.loads(body)["error"]["message"]
    assert (answer_status, found if message == "__ANY__" else message) == (status, found)
    time.sleep(0.1)
    assert lane.forwarded() == before, "llama-server received a request the gate refused"


def test_a_spent_token_never_reaches_the_real_llama_server_twice(lane: Lane) -> None:
    token = lane.token()
    before = len(lane.forwarded())
    assert lane.exchange(request(token, body={**CHAT, "max_tokens": 4}))[0] == 200
    status, body = lane.exchange(request(token, body={**CHAT, "max_tokens": 4}))
    assert status == 401
    assert json.loads(body)["error"]["message"] == "The token has already been used: ask for a new one."
    assert lane.forwarded()[before:] == [b"POST /v1/chat/completions HTTP/1.1"]
