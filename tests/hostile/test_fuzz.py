"""Property and fuzz tests: the gate's pure checks and its HTTP front end under arbitrary input.

Example counts are bounded and deadlines off, so a run takes seconds on a 2-core CI machine and
never fails for being slow; `derandomize` keeps every run the same, so a failure replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fuzz_strength import examples
from gate_fakes import MASTER_KEY, MODEL, Harness, chat_request, running_gate
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llama_direct.lanes import LANE_ROUTES, ROUTE_AT
from llama_direct.refusals import RequestRefusal
from llama_direct.tokens import Claims, Grant
from llama_launcher.gate.scope import RequestHead, check_request
from llama_launcher.gate.shaping import ALLOWED_FIELDS, DENIED_FIELDS, LENGTH_FIELDS, ShapingPolicy, shape_chat_body

PURE = settings(
    max_examples=examples(500), deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
NETWORK = settings(
    max_examples=examples(100), deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
APP = "http://app.test"

# -- scope.check_request -------------------------------------------------------------------------

_SEGMENTS = ["/v1", "/chat", "/completions", "/stream", "/streams", "/lookup", "/slots", "/props", "/metrics",
             "/..", "/.", "/%2e%2e", "/%2E", "/%2f", "/%76", "/", "\\", "/V1", ";x", "/tokenize", "/v1/stream"]
_QUERIES = ["", "?", "?conv_id=c1", "?conv_id=c2", "?conv_id=c1&from=12", "?from=3&conv_id=c1", "?conv_id=c1&from=-1",
            "?conv_id=c1&conv_id=c1", "?conv_id=%63%31", "?conv_id=c1&from=1e3", "?x=1", "?conv_id=c+1", "#frag",
            "?conv_id=c1&from=99999999999999999999", "?conv_id="]
_ROUTES = [*ROUTE_AT, ("GET", "/v1/streams/lookup"), ("POST", "/slots"), ("GET", "/v1/chat/completions")]

targets = st.one_of(
    st.builds(
        lambda path, query: ("/direct" + path + query).encode(),
        st.sampled_from(["/v1/chat/completions", "/v1/stream", "/v1/streams/lookup"]),
        st.sampled_from(_QUERIES),
    ),
    st.builds(
        lambda prefix, parts, query: (prefix + "".join(parts) + query).encode("latin-1"),
        st.sampled_from(["/direct", "/direct/", "/DIRECT", "//direct", "/direct/.."]),
        st.lists(st.sampled_from(_SEGMENTS), max_size=5),
        st.sampled_from(_QUERIES),
    ),
    st.binary(max_size=80),
)
_GOOD_HEADERS = [(b"origin", APP.encode()), (b"content-type", b"application/json"), (b"x-conversation-id", b"c1"),
                 (b"sec-fetch-site", b"same-origin")]
header_lists = st.lists(
    st.one_of(
        st.sampled_from(_GOOD_HEADERS),
        st.tuples(
            st.sampled_from([b"origin", b"x-conversation-id", b"content-type", b"content-encoding",
                             b"sec-fetch-site"]),
            st.one_of(
                st.sampled_from([b"http://evil.test", b"null", b"c2", b"text/plain", b"gzip", b"identity",
                                 b"cross-site", b"application/json; charset=utf-8"]),
                st.binary(max_size=20),
            ),
        ),
    ),
    max_size=6,
)
claim_sets = st.builds(
    lambda routes, scope, origin, conversation, cap: Claims(
        iss="b", aud="g", sub="alice", iat=100, nbf=100, exp=130, jti="j", scope=scope,
        grant=Grant(routes=tuple(routes), model=MODEL, max_tokens=cap, origin=origin, conversation_id=conversation),
    ),
    st.lists(st.sampled_from(_ROUTES), min_size=1, max_size=4, unique=True),
    st.sampled_from(["chat", "resume", "cancel", "chat resume", "resume cancel", "chat resume cancel"]),
    st.sampled_from([None, APP]),
    st.sampled_from([None, "c1"]),
    st.integers(1, 4096),
)


@st.composite
def coherent(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[bytes, bytes]], Claims]:
    """A request its grant allows, then at most two hostile changes: near misses are where bugs hide."""
    lane = draw(st.sampled_from(LANE_ROUTES))
    (method, path), kind = lane.key, lane.scope
    conversation = draw(st.sampled_from([None, "c1"])) if lane.opens_conversation else "c1"
    origin = draw(st.sampled_from([None, APP]))
    grant = Grant(routes=((method, path),), model=MODEL, max_tokens=64, origin=origin, conversation_id=conversation)
    granted = Claims(iss="b", aud="g", sub="alice", iat=100, nbf=100, exp=130, jti="j", scope=kind, grant=grant)
    query = "" if not lane.continues_conversation else "?conv_id=c1" + draw(st.sampled_from(["", "&from=7"]))
    headers = [(b"content-type", b"application/json")]
    if origin:
        headers.append((b"origin", APP.encode()))
    if conversation and lane.opens_conversation:
        headers.append((b"x-conversation-id", b"c1"))
    target = ("/direct" + path + query).encode()
    for change in draw(st.lists(st.sampled_from(range(6)), max_size=2)):
        if change == 0:
            method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "post"]))
        elif change == 1:
            at = draw(st.integers(0, len(target)))
            piece = draw(st.sampled_from([b"/..", b"%2e", b"/", b"?", b"&from=1", b"A", b"\\"]))
            target = target[:at] + piece + target[at:]
        elif change == 2:
            headers.append(draw(st.sampled_from([(b"origin", b"http://evil.test"), (b"origin", APP.encode()),
                                                 (b"x-conversation-id", b"c2"), (b"content-encoding", b"gzip")])))
        elif change == 3:
            headers = headers[1:]
        elif change == 4:
            granted = Claims(**{**granted.__dict__, "scope": draw(st.sampled_from(["chat", "resume", "cancel"]))})
        else:
            headers.append((b"sec-fetch-site", draw(st.sampled_from([b"same-origin", b"cross-site"]))))
    return method, target, headers, granted


@PURE
@given(request=st.one_of(
    coherent(),
    coherent(),
    coherent(),
    st.tuples(st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD"]), targets, header_lists, claim_sets),
))
def test_check_request_allows_only_what_the_grant_names(
    request: tuple[str, bytes, list[tuple[bytes, bytes]], Claims],
) -> None:
    method, target, headers, granted = request
    try:
        route = check_request(RequestHead(method, target, headers), granted)
    except RequestRefusal as refusal:
        assert 400 <= refusal.status < 500 and refusal.status != 401
        event(f"refused {refusal.code}")
        return
    event(f"allowed {route.lane.name}")
    grant = granted.grant
    path = target.decode("ascii").partition("?")[0].removeprefix("/direct")
    assert (method, path) in grant.routes and (method, path) in ROUTE_AT
    assert route.lane == ROUTE_AT[(method, path)] and route.lane.scope in granted.scope.split()
    assert not any(bad in target.partition(b"?")[0] for bad in (b"..", b"%", b"//", b"\\", b"#"))
    origins = [value.decode("latin-1") for name, value in headers if name == b"origin"]
    if grant.origin is None:
        assert origins == []
    else:
        sites = [value for name, value in headers if name == b"sec-fetch-site"]
        assert origins == [grant.origin] or (not origins and method == "GET" and sites == [b"same-origin"])
    conversations = [value.decode("latin-1") for name, value in headers if name == b"x-conversation-id"]
    assert conversations in ([], [grant.conversation_id])
    if not route.lane.continues_conversation:
        assert route.upstream_target == path == route.lane.path
    else:
        assert grant.conversation_id is not None
        assert re.fullmatch(r"/v1/stream\?conv_id=c1(&from=[0-9]+)?", route.upstream_target)


# -- shaping.shape_chat_body ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool"]), "content": st.text(max_size=20)},
    )
    | st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool"])},
        optional={"content": st.one_of(st.text(max_size=20), st.none(), st.lists(st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "input_audio"])},
            optional={"text": st.text(max_size=8), "image_url": st.fixed_dictionaries(
                {"url": st.sampled_from(["data:image/png;base64,AAAA", "http://x/y.png", "data:,x"])})},
        ), max_size=3))},
    ),
    max_size=3,
)
_ODD_FIELDS = sorted(DENIED_FIELDS | {"repetition_penalty", "image_base64", "extra", "MAX_TOKENS", "model", "n"})
_LENGTH_VALUES = st.one_of(st.integers(-3, 5000), st.none(), st.booleans(), st.floats(0, 10), st.text(max_size=3))
bodies = st.one_of(
    st.builds(
        lambda lengths, extra: json.dumps({"messages": [{"role": "user", "content": "hi"}], **extra, **lengths})
        .encode(),
        st.dictionaries(st.sampled_from(LENGTH_FIELDS), _LENGTH_VALUES, max_size=3),
        st.dictionaries(st.sampled_from(["stream", "temperature", "model", "n", "seed"]),
                        st.sampled_from([True, 0.5, 1, MODEL, "other", None]), max_size=2),
    ),
    st.builds(
        lambda fields, odd, msgs, lengths: json.dumps({**fields, **odd, "messages": msgs, **lengths}).encode(),
        st.dictionaries(st.sampled_from(sorted(ALLOWED_FIELDS - set(LENGTH_FIELDS))), json_values, max_size=4),
        st.one_of(st.just({}), st.dictionaries(st.sampled_from(_ODD_FIELDS), json_values, max_size=2)),
        messages,
        st.dictionaries(st.sampled_from(LENGTH_FIELDS), _LENGTH_VALUES, max_size=3),
    ),
    st.builds(lambda value: json.dumps(value).encode(), json_values),
    st.binary(max_size=200),
)


@PURE
@given(body=bodies, cap=st.integers(1, 4096), vision=st.booleans())
def test_shaping_never_forwards_a_denied_field_or_a_length_over_the_cap(body: bytes, cap: int, vision: bool) -> None:
    grant = Grant(routes=(("POST", "/v1/chat/completions"),), model=MODEL, max_tokens=cap)
    policy = ShapingPolicy(vision=vision, max_body_bytes=4096, max_image_bytes=1024, max_image_pixels=4096)
    try:
        shaped = shape_chat_body(body, grant, policy)
    except RequestRefusal as refusal:
        assert 400 <= refusal.status < 500
        event(f"refused {refusal.code}")
        return
    event("shaped")
    value = json.loads(shaped)
    assert isinstance(value, dict)
    assert value.keys() <= ALLOWED_FIELDS and not value.keys() & DENIED_FIELDS
    lengths = [value[name] for name in LENGTH_FIELDS if name in value]
    assert lengths and all(type(length) is int and 1 <= length <= cap for length in lengths)
    assert value["model"] == MODEL and value.get("n", 1) == 1
    assert isinstance(value["messages"], list) and value["messages"]
    assert shape_chat_body(shaped, grant, policy) == shaped


# -- the HTTP front end --------------------------------------------------------------------------


class GateThread:
    """An in-process gate (`gate_fakes.running_gate`) on an event loop of its own, for blocking clients."""

    def __init__(self, **gate_settings: Any) -> None:
        self.settings = gate_settings
        self.harness: Harness | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Harness:
        self._thread.start()
        assert self._ready.wait(10), "the gate did not start"
        assert self.harness is not None
        return self.harness

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with running_gate(**self.settings) as harness:
            self.harness = harness
            self._ready.set()
            await asyncio.wait_for(self._stop.wait(), 600)


QUIET = 0.1
"""The fuzzed gate's head and body timeouts: every connection ends within a moment."""


@pytest.fixture(scope="module")
def gate() -> Iterator[Harness]:
    with GateThread(head_timeout=QUIET, body_timeout=QUIET, max_body_bytes=64 * 1024) as harness:
        yield harness


def blocking_exchange(port: int, data: bytes) -> bytes:
    """Everything the gate sends back until it closes; a gate that never closes fails the test."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError("the gate neither answered nor closed within 5 s") from None
    return bytes(received)


_STATUS_LINE = re.compile(rb"(?:^|\r\n)HTTP/1\.1 ([0-9]{3}) [^\r\n]*\r\n")


def statuses(raw: bytes) -> list[int]:
    return [int(code) for code in _STATUS_LINE.findall(raw)]


def assert_forwarded_requests_are_well_formed(h: Harness, since: int) -> None:
    """What reached llama-server is exactly what the gate builds, and each connection held one request.

    The fakes parse with h11 and record only what parses, so a connection without a recorded
    request is a malformed request the gate passed on (to llama-server or to the broker).
    """
    assert h.llama.connections == len(h.llama.requests), "llama-server got a connection without a valid request"
    assert h.broker.connections == len(h.broker.requests), "the broker got a connection without a valid request"
    for received in h.upstream_requests[since:]:
        assert (received.method, received.target) == ("POST", "/v1/chat/completions")
        assert [name for name, _ in received.headers] == [
            b"Host", b"Authorization", b"Content-Type", b"Content-Length", b"Connection"]
        assert received.header(b"Authorization") == [b"Bearer " + MASTER_KEY.encode()]
        body = json.loads(received.body)
        assert body.keys() <= ALLOWED_FIELDS
        assert all(type(body[name]) is int and 1 <= body[name] <= 64 for name in LENGTH_FIELDS if name in body)


def _mutate(raw: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    data = bytearray(raw)
    for kind, where, piece in edits:
        at = int(where * len(data))
        if kind == "insert":
            data[at:at] = piece
        elif kind == "delete":
            del data[at : at + max(1, len(piece))]
        elif kind == "replace":
            data[at : at + len(piece)] = piece
        elif kind == "header":
            end = data.find(b"\r\n\r\n")
            data[end + 2 : end + 2] = piece + b"\r\n"
        elif kind == "duplicate_line":
            start = data.rfind(b"\r\n", 0, at) + 2 if data.rfind(b"\r\n", 0, at) >= 0 else 0
            end = data.find(b"\r\n", at)
            if end >= 0:
                data[end + 2 : end + 2] = data[start : end + 2]
    return bytes(data)


_PIECES = [b"\r\n", b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"0", b"-1", b"99999999999999999999", b"%2e%2e",
           b"/..", b"//", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"\r\n\r\n", b"\xff",
           b"Content-Length: 0\r\n\r\nPOST /direct/v1/chat/completions HTTP/1.1\r\n", b"\r\n  folded"]
_HEADERS = [b"X-Conversation-Id: c1", b"Origin: http://evil.test", b"Transfer-Encoding: chunked",
            b"Content-Length: 3", b"Connection: close", b"Expect: 100-continue", b"Content-Encoding: gzip",
            b"X-Forwarded-For: 10.0.0.1", b"Host: other", b"Authorization: Bearer x", b"Connection: keep-alive, te",
            b"TE: trailers", b"Upgrade: h2c", b"Content-Type: text/plain", b"Sec-Fetch-Site: same-origin"]
edits = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["insert", "delete", "replace", "duplicate_line"]), st.floats(0, 1),
                  st.one_of(st.sampled_from(_PIECES), st.binary(min_size=1, max_size=8))),
        st.tuples(st.just("header"), st.just(0.0), st.sampled_from(_HEADERS)),
    ),
    min_size=1, max_size=4,
)


@pytest.mark.timeout(240)
@NETWORK
@given(changes=edits)
def test_mutated_requests_get_a_4xx_or_a_close_and_nothing_malformed_is_forwarded(
    gate: Harness, changes: list[tuple[str, float, bytes]]
) -> None:
    since, relayed = len(gate.upstream_requests), len(gate.broker.requests)
    raw = _mutate(chat_request(gate.token()), changes)
    answer = blocking_exchange(gate.port, raw)  # type: ignore[arg-type]
    codes = statuses(answer)
    assert all(code == 200 or 400 <= code < 500 or code == 505 for code in codes), codes
    forwarded = len(gate.upstream_requests) - since
    event(f"answered {codes[:2]}, forwarded {forwarded}")
    assert forwarded <= 1, "one single-use token served two requests"
    assert forwarded + len(gate.broker.requests) - relayed == codes.count(200)
    assert_forwarded_requests_are_well_formed(gate, since)


@pytest.mark.timeout(240)
@NETWORK
@given(data=st.one_of(
    st.binary(max_size=600),
    st.builds(lambda method, rest: method + rest, st.sampled_from([b"GET ", b"POST ", b"DELETE ", b"OPTIONS "]),
              st.binary(max_size=400)),
))
def test_random_bytes_get_a_4xx_or_a_close_and_never_reach_llama_server(gate: Harness, data: bytes) -> None:
    since, relayed = len(gate.upstream_requests), len(gate.broker.requests)
    codes = statuses(blocking_exchange(gate.port, data))  # type: ignore[arg-type]
    assert all(400 <= code < 500 or code == 505 or code == 200 for code in codes), codes
    assert len(gate.upstream_requests) == since
    assert codes.count(200) == len(gate.broker.requests) - relayed, "a 200 that the broker did not give"
    assert_forwarded_requests_are_well_formed(gate, since)


def test_the_gate_still_serves_after_the_fuzzing(gate: Harness) -> None:
    """Runs after the fuzz tests in file order: no input above broke the gate for the next client."""
    since = len(gate.upstream_requests)
    answer = blocking_exchange(gate.port, chat_request(gate.token()))  # type: ignore[arg-type]
    assert statuses(answer) == [200]
    assert len(gate.upstream_requests) == since + 1
