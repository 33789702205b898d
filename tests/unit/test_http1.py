"""The gate's pure HTTP/1.1 pieces: the strict framing check and the heads it writes."""

from __future__ import annotations

import pytest

from llama_direct.refusals import RequestRefusal
from llama_launcher.gate.http1 import (
    MAX_HEAD_BYTES,
    check_raw_head,
    end_to_end,
    find_head_end,
    request_head,
    simple_response,
)


def head(*lines: bytes) -> bytes:
    return b"\r\n".join((b"POST /x HTTP/1.1", b"Host: h", *lines)) + b"\r\n\r\n"


def test_an_ordinary_head_passes() -> None:
    check_raw_head(head(b"Content-Length: 12", b"Content-Type: application/json"))
    check_raw_head(head(b"Transfer-Encoding: Chunked"))
    check_raw_head(head(b"content-length:7"))


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        ((b"Content-Length: 1", b"Transfer-Encoding: chunked"), "ambiguous_framing"),
        ((b"Content-Length: 1", b"content-length: 1"), "duplicate_content_length"),
        ((b"Content-Length: 1,1",), "bad_content_length"),
        ((b"Content-Length: +1",), "bad_content_length"),
        ((b"Content-Length: 1234567890123456789",), "bad_content_length"),
        ((b"Content-Length: ",), "bad_content_length"),
        ((b"Transfer-Encoding: chunked, gzip",), "bad_transfer_encoding"),
        ((b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), "bad_transfer_encoding"),
        ((b"X-A: 1", b" continued"), "obs_fold"),
        ((b"X-A: 1", b"\tcontinued"), "obs_fold"),
        ((b"X-A: \x00",), "bad_header"),
        ((b"X-A: a\rb",), "bad_line_ending"),
        ((b"X-A: a\nb",), "bad_line_ending"),
        ((b"X A: b",), "bad_header"),
        ((b"Content-Length : 1",), "bad_header"),
        ((b"NoColon",), "bad_header"),
    ],
)
def test_ambiguous_heads_are_refused(lines: tuple[bytes, ...], code: str) -> None:
    with pytest.raises(RequestRefusal) as caught:
        check_raw_head(head(*lines))
    assert (caught.value.status, caught.value.code) == (400, code)


def test_find_head_end_resumes_where_it_stopped_and_limits_the_size() -> None:
    data = bytearray(b"GET / HTTP/1.1\r\nHost: h\r\n\r")
    assert find_head_end(data) == -1
    scanned = len(data)
    data += b"\nrest"
    assert find_head_end(data, scanned) == len(data) - 4
    with pytest.raises(RequestRefusal) as caught:
        find_head_end(b"a" * (MAX_HEAD_BYTES + 1))
    assert caught.value.status == 431
    with pytest.raises(RequestRefusal):
        find_head_end(b"a" * MAX_HEAD_BYTES + b"\r\n\r\n")


def test_end_to_end_drops_hop_by_hop_and_what_connection_names() -> None:
    headers = [
        (b"Host", b"h"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"Cookie", b"a=b"),
    ]
    assert end_to_end(headers) == [(b"Host", b"h"), (b"Cookie", b"a=b")]


def test_heads_are_written_exactly() -> None:
    assert request_head(b"GET", b"/a?b", [(b"Host", b"h")]) == b"GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n"
    assert simple_response(404, b"{}", [(b"Vary", b"Origin")], close=True) == (
        b"HTTP/1.1 404 Not Found\r\nCache-Control: no-store\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nVary: Origin\r\nConnection: close\r\n\r\n{}"
    )
    assert simple_response(204, b"") == b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n\r\n"
