"""The gate's connection core, sans I/O: each framing case is bytes in, events out, no server.

The driver below does what `connection.ClientConnection` does with each event (let a head through,
stop at a refusal or a dispatch), so these are the behaviours the live gate has; `test_proxy.py`
and the hostile suite hold the same cases over sockets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

import pytest

from llama_direct.refusals import RateLimited
from llama_launcher.gate.connection_core import (
    BODY,
    BUSY,
    CLOSED,
    CONTINUE,
    HEAD,
    NEED_DATA,
    PAUSE,
    PIPELINE_LIMIT,
    BodyEnd,
    ConnectionCore,
    Data,
    Dispatch,
    Event,
    Head,
    Refuse,
    Rules,
)
from llama_launcher.gate.http1 import MAX_HEAD_BYTES

RULES = Rules(lane=True, cors=False, health=True, broker=True, lane_prefix=b"/direct/", max_body_bytes=1000,
              max_small_body_bytes=100, allowed_origins=frozenset({"https://app.example"}))
LANE = b"/direct/v1/chat/completions"


def post(target: bytes = LANE, body: bytes = b"{}", *extra: bytes, version: bytes = b"1.1") -> bytes:
    lines = [b"POST " + target + b" HTTP/" + version, b"Host: gate", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def get(target: bytes, *extra: bytes, version: bytes = b"1.1") -> bytes:
    return b"\r\n".join([b"GET " + target + b" HTTP/" + version, b"Host: gate", *extra]) + b"\r\n\r\n"


def chunked(target: bytes = LANE) -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\nHost: gate\r\nTransfer-Encoding: chunked\r\n\r\n"


def drain(core: ConnectionCore) -> list[Event]:
    """The events the shell acts on now: a refusal or a dispatch hands the request on, so it stops there."""
    events: list[Event] = []
    while (event := core.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, (Refuse, Dispatch)) or event is PAUSE:
            break
    return events


def feed(core: ConnectionCore, *reads: bytes) -> list[Event]:
    events: list[Event] = []
    for data in reads:
        core.receive(data)
        events += drain(core)
    return events


def kinds(events: Iterable[Event]) -> list[str]:
    return [type(event).__name__ if not isinstance(event, Dispatch) else f"Dispatch:{event.kind}" for event in events]


def refusal_of(events: list[Event]) -> tuple[int, str, bool]:
    last = events[-1]
    assert isinstance(last, Refuse), events
    return last.refusal.status, last.refusal.code, last.close


def answered(core: ConnectionCore, *, close: bool = False) -> None:
    """The shell relayed a whole answer and the core says the connection lives on: the next request."""
    assert not core.finished(close=close)
    core.next_request()


# -- heads and bodies ------------------------------------------------------------------------


def test_a_whole_request_in_one_read_is_a_head_its_body_and_a_dispatch() -> None:
    core = ConnectionCore(RULES)
    events = feed(core, post(LANE, b'{"a":1}'))
    assert kinds(events) == ["Head", "BodyEnd", "Dispatch:lane"]
    assert isinstance(events[0], Head) and events[0].request.target == LANE
    assert core.state == BUSY and core.take_body() == b'{"a":1}' and core.take_body() == b""


@pytest.mark.parametrize(("wire", "body"), [(post(LANE, b'{"model":"m"}'), b'{"model":"m"}'),
                                            (chunked() + b"3\r\nabc\r\n0\r\n\r\n", b"abc")])
def test_a_request_split_at_any_byte_reads_the_same(wire: bytes, body: bytes) -> None:
    """However the reads fall (a head cut anywhere, byte by byte), the events and the body are the same
    (the dispatch comes as soon as the head is through: before the body's end where it comes later)."""
    expected = ["BodyEnd", "Dispatch:lane", "Head"]
    for cut in range(len(wire) + 1):
        core = ConnectionCore(RULES)
        events = feed(core, wire[:cut], wire[cut:])
        assert (sorted(kinds(events)), core.take_body(), core.state) == (expected, body, BUSY), cut
    core = ConnectionCore(RULES)
    events = feed(core, *(bytes([byte]) for byte in wire))
    assert (kinds(events), core.take_body()) == (["Head", "Dispatch:lane", "BodyEnd"], body)


def test_a_body_still_arriving_is_dispatched_first_then_read_to_its_end() -> None:
    core = ConnectionCore(RULES)
    wire = post(LANE, b"0123456789")
    assert kinds(feed(core, wire[:-6])) == ["Head", "Dispatch:lane"]
    assert core.state == BODY and core.closing()  # answered now, the unread rest would end the connection
    assert feed(core, b"456") == [] and core.state == BODY
    assert kinds(feed(core, b"789")) == ["BodyEnd"]
    assert core.take_body() == b"0123456789" and not core.closing()


def test_stray_crlfs_before_a_head_are_skipped() -> None:
    core = ConnectionCore(RULES)
    assert kinds(feed(core, b"\r\n\r\n", b"\r\n" + get(b"/health"))) == ["Head", "BodyEnd", "Dispatch:private"]


def test_pipelined_requests_wait_their_turn_and_each_is_read_whole() -> None:
    first, second = post(LANE, b'{"n":1}'), post(LANE, b'{"n":2}', b"Connection: close")
    core = ConnectionCore(RULES)
    assert kinds(feed(core, first + second[:30])) == ["Head", "BodyEnd", "Dispatch:lane"]
    assert feed(core, second[30:]) == []  # busy: the next request's bytes only wait
    assert core.take_body() == b'{"n":1}' and not core.close_after
    answered(core)
    assert core.state == HEAD and core.buf
    assert kinds(drain(core)) == ["Head", "BodyEnd", "Dispatch:lane"]
    assert core.take_body() == b'{"n":2}' and core.close_after and core.finished(close=False)


def test_a_request_pipelined_after_a_chunked_body_is_kept_whole() -> None:
    core = ConnectionCore(RULES)
    assert kinds(feed(core, chunked() + b"3\r\nabc\r\n0\r\n\r\n" + get(b"/health"))) == [
        "Head", "BodyEnd", "Dispatch:lane"]
    assert core.take_body() == b"abc"
    answered(core)
    assert kinds(drain(core)) == ["Head", "BodyEnd", "Dispatch:private"]


def test_reading_pauses_once_past_the_pipeline_limit_and_resumes_for_the_next_request() -> None:
    core = ConnectionCore(RULES)
    feed(core, post())
    assert feed(core, b"x" * PIPELINE_LIMIT) == []
    assert feed(core, b"x") == [PAUSE]
    assert feed(core, b"x") == []  # told once
    assert core.next_request() is True
    assert core.next_request() is False


# -- refusals the bytes earn --------------------------------------------------------------------


def test_a_head_past_16_kb_is_refused_before_it_ends_and_the_connection_closes() -> None:
    core = ConnectionCore(RULES)
    events = feed(core, b"GET /" + b"a" * MAX_HEAD_BYTES)
    assert refusal_of(events) == (431, "head_too_large", True)
    reply = core.refuse(events[-1].refusal, close=True)  # type: ignore[union-attr]  # refusal_of checked it
    assert reply is not None and reply.close and reply.data.startswith(b"HTTP/1.1 431 ")
    assert core.state == HEAD and core.close() and core.state == CLOSED
    assert core.refuse(events[-1].refusal) is None  # type: ignore[union-attr]  # as above


def test_a_whole_head_over_16_kb_is_refused_too() -> None:
    core = ConnectionCore(RULES)
    assert refusal_of(feed(core, get(b"/health", b"X-Pad: " + b"a" * MAX_HEAD_BYTES))) == (431, "head_too_large", True)


@pytest.mark.parametrize(
    ("wire", "status", "code"),
    [
        (b"CONNECT gate:443 HTTP/1.1\r\nHost: gate:443\r\n\r\n", 405, "method_not_allowed"),
        (b"GET http://gate/health HTTP/1.1\r\nHost: gate\r\n\r\n", 400, "bad_target"),
        (post(LANE, b"x" * 1001), 413, "body_too_large"),
        (post(b"/api/form", b"x" * 101), 413, "body_too_large"),  # the broker's small bodies
        (chunked() + b"zz\r\nabc\r\n0\r\n\r\n", 400, "bad_body"),
        (b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400,
         "duplicate_content_length"),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "http_version_not_supported"),
    ],
)
def test_framing_refusals_close_the_connection(wire: bytes, status: int, code: str) -> None:
    core = ConnectionCore(RULES)
    assert refusal_of(feed(core, wire)) == (status, code, True)


def test_a_chunked_body_past_the_limit_is_refused_as_it_arrives() -> None:
    core = ConnectionCore(RULES)
    assert kinds(feed(core, chunked(), b"200\r\n" + b"x" * 512 + b"\r\n")) == ["Head", "Dispatch:lane"]
    assert refusal_of(feed(core, b"200\r\n" + b"x" * 512 + b"\r\n")) == (413, "body_too_large", True)


def test_a_bad_chunk_after_dispatch_is_refused_and_closes() -> None:
    core = ConnectionCore(RULES)
    feed(core, chunked())
    assert refusal_of(feed(core, b"3\r\nabcX")) == (400, "bad_body", True)


def test_a_baseline_route_off_the_lane_takes_a_large_body() -> None:
    core = ConnectionCore(RULES)
    assert kinds(feed(core, post(b"/v1/chat/completions", b"x" * 500))) == ["Head", "BodyEnd", "Dispatch:broker"]


def test_a_listener_that_serves_nothing_at_a_path_refuses_404_and_keeps_the_connection() -> None:
    core = ConnectionCore(_private())
    events = feed(core, get(b"/elsewhere"))
    assert kinds(events) == ["Head", "BodyEnd", "Refuse"] and refusal_of(events) == (404, "not_found", False)
    reply = core.refuse(events[-1].refusal)  # type: ignore[union-attr]  # refusal_of checked it
    assert reply is not None and not reply.close and b"Connection: close" not in reply.data


def _private() -> Rules:
    """`gate.sock`'s listener: the lane and `/health`, no broker."""
    return Rules(lane=True, cors=False, health=True, broker=False, lane_prefix=b"/direct/", max_body_bytes=1000,
                 max_small_body_bytes=100, allowed_origins=frozenset())


def test_a_refusal_before_the_body_is_read_closes_the_connection() -> None:
    core = ConnectionCore(RULES)
    events = feed(core, post(LANE, b"0123456789")[:-4])
    assert kinds(events) == ["Head", "Dispatch:lane"]
    reply = core.refuse(RateLimited(7))
    assert reply is not None and reply.close and b"Retry-After: 7\r\n" in reply.data


# -- what serves a request ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "kind"),
    [
        (get(b"/health"), "private"),
        (b"HEAD /health HTTP/1.1\r\nHost: gate\r\n\r\n", "private"),
        (post(b"/unload", b'{"model": "a"}'), "private"),
        (get(b"/unload"), "broker"),
        (post(b"/health"), "broker"),
        (get(b"/direct/v1/models"), "lane"),
        (b"OPTIONS /direct/v1/chat/completions HTTP/1.1\r\nHost: gate\r\n\r\n", "lane"),
        (get(b"/directory"), "broker"),
    ],
)
def test_each_request_goes_where_its_listener_serves_it(wire: bytes, kind: str) -> None:
    assert kinds(feed(ConnectionCore(RULES), wire))[-1] == f"Dispatch:{kind}"


def test_only_the_private_listener_answers_an_unload_itself() -> None:
    public = Rules(lane=True, cors=False, health=False, broker=True, lane_prefix=b"/direct/", max_body_bytes=1000,
                   max_small_body_bytes=100, allowed_origins=frozenset())
    assert kinds(feed(ConnectionCore(public), post(b"/unload", b'{"model": "a"}')))[-1] == "Dispatch:broker"
    assert kinds(feed(ConnectionCore(_private()), post(b"/unload", b'{"model": "a"}')))[-1] == "Dispatch:private"


def test_a_cross_origin_listener_answers_preflight_and_puts_cors_on_refusals() -> None:
    rules = Rules(lane=True, cors=True, health=False, broker=False, lane_prefix=b"/direct/", max_body_bytes=1000,
                  max_small_body_bytes=100, allowed_origins=frozenset({"https://app.example"}))
    wire = b"OPTIONS /direct/v1/chat/completions HTTP/1.1\r\nHost: gate\r\nOrigin: https://app.example\r\n\r\n"
    core = ConnectionCore(rules)
    assert kinds(feed(core, wire))[-1] == "Dispatch:preflight"
    reply = core.refuse(RateLimited(1))
    assert reply is not None and b"Access-Control-Allow-Origin: https://app.example\r\n" in reply.data
    core = ConnectionCore(rules)
    feed(core, wire.replace(b"app.example", b"evil.example"))
    reply = core.refuse(RateLimited(1))
    assert reply is not None and b"Access-Control" not in reply.data


# -- keep-alive or close ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "close"),
    [
        (get(b"/health"), False),
        (get(b"/health", b"Connection: close"), True),
        (get(b"/health", b"Connection: keep-alive, Close"), True),
        (get(b"/health", version=b"1.0"), True),
        (get(b"/health", b"Connection: keep-alive", version=b"1.0"), True),
    ],
)
def test_a_connection_lives_on_only_for_http11_that_did_not_ask_to_close(wire: bytes, close: bool) -> None:
    core = ConnectionCore(RULES)
    feed(core, wire)
    assert core.finished(close=False) is close
    assert core.answer(b"HTTP/1.1 204 No Content\r\n\r\n").close is close
    assert core.finished(close=True)  # the upstream's framing can always end it
    assert core.http10 is wire.split(b"\r\n")[0].endswith(b"1.0")


def test_once_a_response_head_went_out_a_refusal_can_only_close() -> None:
    core = ConnectionCore(RULES)
    feed(core, post())
    core.head_sent()
    reply = core.refuse(RateLimited(1))
    assert reply is not None and (reply.data, reply.close) == (b"", True)
    answered(core)
    assert not core.sent_head and core.origin is None


# -- 100-continue and the deadlines ---------------------------------------------------------------


def test_continue_is_owed_to_http11_until_a_body_byte_comes() -> None:
    core = ConnectionCore(RULES)
    feed(core, post(LANE, b"abcd", b"Expect: 100-continue")[:-4])
    assert core.expects_continue and CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
    feed(core, b"a")
    assert not core.expects_continue
    core = ConnectionCore(RULES)
    feed(core, post(LANE, b"abcd", b"Expect: 100-continue", version=b"1.0")[:-4])
    assert not core.expects_continue


def test_the_head_deadline_refuses_a_head_begun_and_closes_an_idle_connection_silently() -> None:
    idle = ConnectionCore(RULES)
    assert idle.head_timeout() is True
    begun = ConnectionCore(RULES)
    feed(begun, b"GET /hea")
    decision = begun.head_timeout()
    assert isinstance(decision, Refuse) and (decision.refusal.status, decision.close) == (408, True)
    busy = ConnectionCore(RULES)
    feed(busy, get(b"/health"))
    assert busy.head_timeout() is False


def test_the_body_deadline_refuses_only_a_body_still_arriving() -> None:
    core = ConnectionCore(RULES)
    feed(core, post(LANE, b"abcd")[:-1])
    decision = core.body_timeout()
    assert isinstance(decision, Refuse) and (decision.refusal.code, decision.close) == ("request_timeout", True)
    feed(core, b"d")
    assert core.body_timeout() is None


# -- a body relayed as it arrives ----------------------------------------------------------------


def test_a_poured_body_comes_out_as_data_events_and_what_came_before_is_taken_once() -> None:
    core = ConnectionCore(RULES)
    feed(core, chunked(b"/api/form") + b"2\r\nab\r\n")
    assert core.take_body() == b"ab"
    core.pour()
    events = feed(core, b"2\r\ncd\r\n", b"0\r\n\r\n")
    assert [e.piece if isinstance(e, Data) else e for e in events] == [b"cd", BodyEnd()]
    assert core.state == BUSY and core.take_body() == b""


def test_a_refusal_body_is_the_catalogue_json() -> None:
    core = ConnectionCore(RULES)
    reply = core.refuse(RateLimited(3))
    assert reply is not None
    assert json.loads(reply.data.partition(b"\r\n\r\n")[2])["error"]["reason"] == "rate_limited"


@pytest.mark.parametrize(("metrics", "broker", "served"), [
    (True, True, "metrics"),  # one-port public port, the app port: the gate's own, never the broker's
    (False, True, "broker"),  # where the gate serves no metrics, it is the broker's path like any other
    (True, False, "metrics"),  # --metrics-port: metrics alone
])
def test_metrics_are_dispatched_only_where_the_listener_serves_them(metrics: bool, broker: bool, served: str) -> None:
    core = ConnectionCore(dataclasses.replace(RULES, metrics=metrics, broker=broker, lane=broker))
    core.receive(get(b"/metrics"))
    events = drain(core)
    assert isinstance(events[-1], Dispatch) and events[-1].kind == served
    elsewhere = ConnectionCore(dataclasses.replace(RULES, metrics=True, broker=False, lane=False))
    elsewhere.receive(get(b"/"))
    refused = drain(elsewhere)[-1]
    assert isinstance(refused, Refuse) and refused.refusal.status == 404, "a metrics port serves nothing else"
