"""The request half's parser: every refusal h11 (with `check_raw_head`) gave, and where a body ends.

httptools replaced h11 here for speed; llhttp is lenient where h11 was strict, so each framing
refusal is pinned below with its status and code, and a differential fuzz test holds the new parser
to never accepting a head that h11 refused, nor reading an accepted one differently.
"""

from __future__ import annotations

import re

import h11
import pytest
from fuzz_strength import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_direct.refusals import Refusal, RequestRefusal, VersionNotSupported
from llama_launcher.gate.http1 import MAX_HEAD_BYTES, check_raw_head, find_head_end
from llama_launcher.gate.request_reader import BodyReader, read_head


def head(*lines: bytes, line: bytes = b"POST /x HTTP/1.1") -> bytes:
    return b"\r\n".join((line, *lines)) + b"\r\n\r\n"


def refusal(raw: bytes) -> tuple[int, str]:
    with pytest.raises(Refusal) as caught:
        read_head(raw)
    return caught.value.status, caught.value.code


def test_an_ordinary_head_is_read_as_h11_read_it() -> None:
    request = read_head(head(b"Host: h", b"Content-Length: 12", b"X-Mixed-Case:  a b \t", b"Empty:"))
    assert (request.method, request.target, request.http_version) == (b"POST", b"/x", b"1.1")
    assert request.headers == [(b"host", b"h"), (b"content-length", b"12"), (b"x-mixed-case", b"a b"),
                               (b"empty", b"")]
    assert request.raw_headers[2] == (b"X-Mixed-Case", b"a b")
    assert (request.length, request.chunked, request.expects_continue) == (12, False, False)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (head(b"Host: h", b"Content-Length: 1", b"Transfer-Encoding: chunked"), 400, "ambiguous_framing"),
        (head(b"Host: h", b"Content-Length: 1", b"content-length: 1"), 400, "duplicate_content_length"),
        (head(b"Host: h", b"Content-Length: 1", b"Content-Length: 2"), 400, "duplicate_content_length"),
        (head(b"Host: h", b"Content-Length: 1, 1"), 400, "bad_content_length"),
        (head(b"Host: h", b"Content-Length: -1"), 400, "bad_content_length"),
        (head(b"Host: h", b"Content-Length: 99999999999999999999999"), 400, "bad_content_length"),
        (head(b"Host: h", b"Transfer-Encoding: gzip"), 400, "bad_transfer_encoding"),
        (head(b"Host: h", b"Transfer-Encoding: gzip, chunked"), 400, "bad_transfer_encoding"),
        (head(b"Host: h", b"Transfer-Encoding: chunked", line=b"POST /x HTTP/1.0"), 400, "bad_transfer_encoding"),
        (head(b"Host: h", b"X-A: 1", b" folded"), 400, "obs_fold"),
        (head(b" Host: h"), 400, "obs_fold"),
        (head(b"Host: h", b"X-A: a\rb"), 400, "bad_line_ending"),
        (head(b"Host: h", b"X-A: a\nb"), 400, "bad_line_ending"),
        (b"POST /x HTTP/1.1\nHost: h\r\n\r\n", 400, "bad_line_ending"),
        (head(b"Host: h", b"X-A: a\x00b"), 400, "bad_header"),
        (head(b"Host: h", b"Content-Length : 1"), 400, "bad_header"),
        (head(b"Host: h", b"No colon"), 400, "bad_header"),
        # the request line, held to h11's grammar (llhttp alone takes the first four)
        (b"GET /direct/v1/stream\r\n\r\n", 400, "bad_request"),
        (head(b"Host: h", line=b"GET  /x HTTP/1.1"), 400, "bad_request"),
        (head(b"Host: h", line=b"GET /x  HTTP/1.1"), 400, "bad_request"),
        (head(b"Host: h", line=b"GET /\x80 HTTP/1.1"), 400, "bad_request"),
        (head(b"Host: h", line=b"GET /x HTTP/1.1 "), 400, "bad_request"),
        (head(b"Host: h", line=b"GET /x http/1.1"), 400, "bad_request"),
        (head(b"Host: h", line=b"G@T /x HTTP/1.1"), 400, "bad_request"),
        # versions: h11 read any digit.digit, and the gate answered 505 for all but 1.0 and 1.1
        (head(b"Host: h", line=b"POST /x HTTP/2.0"), 505, "http_version_not_supported"),
        (head(b"Host: h", line=b"POST /x HTTP/1.2"), 505, "http_version_not_supported"),
        (head(b"Host: h", line=b"POST /x HTTP/0.9"), 505, "http_version_not_supported"),
        (b"PRI * HTTP/2.0\r\n\r\n", 505, "http_version_not_supported"),  # the HTTP/2 preface's head
        # Host, as h11 required it
        (head(b"X-A: 1"), 400, "bad_request"),
        (head(b"Host: a", b"host: b"), 400, "bad_request"),
        (head(b"Host: a", b"Host: a", line=b"GET /x HTTP/1.0"), 400, "bad_request"),
        # what llhttp refuses itself
        (head(b"Host: h", b"X-A: a\x01b"), 400, "bad_request"),
        (head(b"Host: h", b"X-A: a\x7fb"), 400, "bad_request"),
        (head(b"Host: h", line=b"FOO /x HTTP/1.1"), 400, "bad_request"),
    ],
)
def test_refusals_keep_their_status_and_code(raw: bytes, status: int, code: str) -> None:
    assert refusal(raw) == (status, code)


def test_an_oversized_head_is_refused_before_it_is_parsed() -> None:
    raw = head(b"Host: h", b"X-Big: " + b"a" * MAX_HEAD_BYTES)
    with pytest.raises(RequestRefusal) as caught:
        find_head_end(raw)
    assert (caught.value.status, caught.value.code) == (431, "head_too_large")


@pytest.mark.parametrize(
    ("raw", "method", "target"),
    [
        (head(b"Host: h", line=b"POST http://upstream/x HTTP/1.1"), b"POST", b"http://upstream/x"),
        (head(b"Host: h", line=b"OPTIONS * HTTP/1.1"), b"OPTIONS", b"*"),
        (head(b"Host: h", line=b"CONNECT upstream:80 HTTP/1.1"), b"CONNECT", b"upstream:80"),
        (head(b"Host: h", b"Connection: upgrade", b"Upgrade: h2c"), b"POST", b"/x"),
        (head(line=b"GET /x HTTP/1.0"), b"GET", b"/x"),
    ],
)
def test_heads_the_connection_refuses_or_serves_are_read_whole(raw: bytes, method: bytes, target: bytes) -> None:
    """Absolute and asterisk form and CONNECT are refused by the connection (400/405): read them here."""
    request = read_head(raw)
    assert (request.method, request.target) == (method, target)


def test_expect_100_continue_is_owed_to_http11_until_a_body_byte_arrives() -> None:
    request = read_head(head(b"Host: h", b"Expect: 100-Continue", b"Content-Length: 3"))
    assert request.expects_continue
    reader = BodyReader(request)
    assert reader.feed(b"") == b"" and reader.expects_continue
    assert reader.feed(b"a") == b"a" and not reader.expects_continue
    assert not read_head(head(b"Expect: 100-continue", line=b"POST /x HTTP/1.0")).expects_continue
    assert not read_head(head(b"Host: h", b"Expect: something-else")).expects_continue


# -- where a body ends ------------------------------------------------------------------------------


def body_of(raw_head: bytes, *reads: bytes) -> tuple[bytes, bool, bytes]:
    reader = BodyReader(read_head(raw_head))
    body = b"".join(reader.feed(data) for data in reads)
    return body, reader.done, reader.trailing


NEXT = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"


def test_a_sized_body_ends_at_its_length_and_keeps_the_next_request() -> None:
    sized = head(b"Host: h", b"Content-Length: 5")
    assert body_of(sized, b"ab", b"cde" + NEXT) == (b"abcde", True, NEXT)
    assert body_of(sized, b"abc") == (b"abc", False, b"")
    assert body_of(head(b"Host: h"), NEXT) == (b"", True, NEXT)
    assert body_of(head(b"Host: h", b"Content-Length: 0"), NEXT, b"more") == (b"", True, NEXT + b"more")


def test_an_upgrade_or_connect_never_moves_where_the_body_ends() -> None:
    """llhttp reads no body after `Upgrade`; the gate counts `Content-Length` itself, so a body stays one."""
    smuggled = b"GET /direct/v1/stream HTTP/1.1\r\nHost: h\r\n\r\n"
    upgrade = head(b"Host: h", b"Connection: upgrade", b"Upgrade: h2c", b"Content-Length: %d" % len(smuggled))
    assert body_of(upgrade, smuggled) == (smuggled, True, b"")
    chunked = head(b"Host: h", b"Connection: upgrade", b"Upgrade: h2c", b"Transfer-Encoding: chunked")
    assert body_of(chunked, b"3\r\nabc\r\n0\r\n\r\n" + NEXT) == (b"abc", True, NEXT)


CHUNKED = head(b"Host: h", b"Transfer-Encoding: chunked")


@pytest.mark.parametrize(
    "wire",
    [
        b"3\r\nabc\r\n0\r\n\r\n",
        b"3;ext=1\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"4\r\n\r\n\r\n\r\n0\r\n\r\n",  # chunk data that is itself CRLF CRLF
        b"A\r\n" + b"\r\n" * 6 + b"0\r\n\r\n",
    ],
)
def test_a_chunked_body_ends_exactly_whatever_the_reads(wire: bytes) -> None:
    """Split at every byte: the body is whole, the end is seen, and the next request is kept intact."""
    expected = {b"A": b"\r\n" * 5, b"4": b"\r\n\r\n"}.get(wire[:1], b"abc")
    data = wire + NEXT
    for cut in range(len(data) + 1):
        assert body_of(CHUNKED, data[:cut], data[cut:]) == (expected, True, NEXT), cut
    assert body_of(CHUNKED, *(bytes([byte]) for byte in data)) == (expected, True, NEXT)


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        b"1" + b"0" * 40 + b"\r\nab\r\n",  # past 64 bits
        b"-1\r\nabc\r\n0\r\n\r\n",
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"3\nabc\n0\n\n",  # bare LF
        b"3\r\nabcX0\r\n\r\n",  # no CRLF after the data
        b"3\r\nabc\r\n0\r\nX: y\r\n folded\r\n\r\n",  # a folded trailer
        b"3\r\nabc\r\n0\r\nX\x00: y\r\n\r\n",
    ],
)
def test_invalid_chunked_framing_is_refused_as_a_bad_body(wire: bytes) -> None:
    reader = BodyReader(read_head(CHUNKED))
    with pytest.raises(RequestRefusal) as caught:
        reader.feed(wire)
    assert (caught.value.status, caught.value.code) == (400, "bad_body")


# -- differential: never laxer than h11 ---------------------------------------------------------


def h11_reads(raw: bytes) -> tuple[h11.Request, bool] | None:
    """What the old request half made of `raw` (`check_raw_head`, then h11), and whether a 100 was owed."""
    try:
        check_raw_head(raw)
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        connection.receive_data(raw)
        event = connection.next_event()
    except (Refusal, h11.RemoteProtocolError):
        return None
    return (event, connection.they_are_waiting_for_100_continue) if isinstance(event, h11.Request) else None


_CONTROL = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BASE = (b"POST /direct/v1/chat/completions HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer a.b.c\r\n"
         b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
_PIECES = [b"\r\n", b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"0", b"-1", b"\x01", b"\x7f", b"\xff", b"/",
           b"HTTP/1.0", b"HTTP/2.0", b"Host: x\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n",
           b"Upgrade: h2c\r\nConnection: upgrade\r\n", b"  folded", b"GET", b"get", b"FOO", b"*", b"http://a"]


@settings(max_examples=examples(1500), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([_BASE, _BASE.replace(b"Content-Length: 4", b"Transfer-Encoding: Chunked")]),
       st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3),
                          st.one_of(st.sampled_from(_PIECES), st.binary(min_size=1, max_size=6))),
                min_size=1, max_size=4))
def test_no_head_h11_refused_is_accepted_and_none_is_read_differently(
    base: bytes, edits: list[tuple[float, int, bytes]],
) -> None:
    data = bytearray(base)
    for where, removed, piece in edits:
        at = int(where * (len(data) - 4))
        data[at : at + removed] = piece
    end = data.find(b"\r\n\r\n")
    raw = bytes(data[: end + 4]) if end >= 0 else bytes(data) + b"\r\n\r\n"
    read = h11_reads(raw)
    try:
        new = read_head(raw)
    except VersionNotSupported:
        assert read is not None and read[0].http_version not in (b"1.0", b"1.1"), raw
        return
    except RequestRefusal:
        # refusing more than h11 is allowed where llhttp is stricter: control characters, unknown methods
        assert read is None or _CONTROL.search(raw) or not raw.startswith(b"POST "), raw
        return
    assert read is not None, raw
    old, waiting = read
    assert (new.method, new.target, new.http_version) == (old.method, old.target, old.http_version)
    h11_like = [(n, v.lower() if n.lower() == b"transfer-encoding" else v) for n, v in new.raw_headers]
    assert h11_like == old.headers.raw_items()  # h11 lower-cased the coding; nothing reads it on
    assert new.headers == [(n.lower(), v) for n, v in new.raw_headers]
    assert new.expects_continue == waiting
    assert new.length == next((int(v) for n, v in old.headers if n == b"content-length"), None)
    assert new.chunked == any(n == b"transfer-encoding" for n, _ in old.headers)
