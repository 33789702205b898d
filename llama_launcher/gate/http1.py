"""Pure HTTP/1.1 pieces of the gate: the strict framing check, and the heads it writes.

No sockets, no asyncio. httptools parses each request head (`request_reader`); `check_raw_head`
runs first, on the raw bytes, because HTTP parsers are lenient where a relay must not be (h11
unfolded obs-fold lines, accepted a duplicated `Content-Length` with the same value, also `5, 5`,
and let `Transfer-Encoding` win over `Content-Length`; llhttp's strictness hangs on flags). Each of
those is how two parsers come to disagree about where a request ends (request smuggling), so the
gate refuses them itself, before a parser sees them, with a code that names what was wrong.

The heads the gate writes are built from parsed, validated names and values only, so nothing a
client sends can break a line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus

from llama_direct.refusals import (
    AMBIGUOUS_FRAMING,
    BAD_CONTENT_LENGTH,
    BAD_HEADER,
    BAD_LINE_ENDING,
    BAD_TRANSFER_ENCODING,
    DUPLICATE_CONTENT_LENGTH,
    HEAD_TOO_LARGE,
    OBS_FOLD,
    RequestRefusal,
)

MAX_HEAD_BYTES = 16 * 1024

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""RFC 9110 7.6.1, plus `Proxy-*`: meaningful for one connection only, never relayed."""

FORWARDING = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"x-forwarded-port", b"x-forwarded-prefix", b"x-real-ip"})
"""Headers the broker would trust for the client's address or scheme: only the gate sets them."""

_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_HEADER_LINES = re.compile(rb".*\r\n(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:.*\r\n)*\r\n")
"""A request line, then lines of `token:value`: every line of a head checked in one regex call. Run
once a bare CR or LF is refused, so `.*` ends at its line's CRLF (a `[^\r\n]` class is 4× slower)."""
_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding):([^\r\n]*)", re.IGNORECASE)
"""The framing headers' lines (a line starts only after CRLF: a bare CR or LF was refused before)."""


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The index just past the head's blank line, -1 while incomplete; head-too-large past the limit."""
    end = buffer.find(b"\r\n\r\n", max(0, start - 3))
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise RequestRefusal(HEAD_TOO_LARGE)
        return -1
    if end + 4 > MAX_HEAD_BYTES:
        raise RequestRefusal(HEAD_TOO_LARGE)
    return end + 4


def check_raw_head(head: bytes) -> None:
    """Refuse the request heads two parsers could read differently (see the module docstring).

    `head` runs from the request line to the blank line that ends it, both included.
    """
    if b"\x00" in head:
        raise RequestRefusal(BAD_HEADER, "nul")
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        raise RequestRefusal(BAD_LINE_ENDING)
    if b"\r\n " in head or b"\r\n\t" in head:
        raise RequestRefusal(OBS_FOLD)
    if _HEADER_LINES.fullmatch(head) is None:
        raise RequestRefusal(BAD_HEADER)
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    for name, value in _FRAMING.findall(head):
        (lengths if name.lower() == b"content-length" else encodings).append(value.strip(b" \t"))
    if lengths and encodings:
        raise RequestRefusal(AMBIGUOUS_FRAMING)
    if len(lengths) > 1:
        raise RequestRefusal(DUPLICATE_CONTENT_LENGTH)
    if lengths and _CONTENT_LENGTH.fullmatch(lengths[0]) is None:
        raise RequestRefusal(BAD_CONTENT_LENGTH)
    if len(encodings) > 1 or (encodings and encodings[0].lower() != b"chunked"):
        raise RequestRefusal(BAD_TRANSFER_ENCODING)
    if encodings and head.split(b"\r\n", 1)[0].endswith(b" HTTP/1.0"):
        # RFC 9112 6.1: HTTP/1.0 has no chunked coding, so a front proxy may read the body differently.
        raise RequestRefusal(BAD_TRANSFER_ENCODING, "http10")


def connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    """The lower-case options named by every `Connection` header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(part.strip().lower() for part in value.split(b","))
    return frozenset(tokens)


def end_to_end(headers: Iterable[Header]) -> list[Header]:
    """The headers a relay may pass on: hop-by-hop ones and those `Connection` names are dropped."""
    headers = list(headers)
    dropped = HOP_BY_HOP | connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def request_head(method: bytes, target: bytes, headers: Iterable[Header]) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def response_head(status: int, reason: bytes, headers: Iterable[Header]) -> bytes:
    lines = [b"HTTP/1.1 " + str(status).encode() + b" " + reason]
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def simple_response(
    status: int, body: bytes, headers: Iterable[Header] = (), *, close: bool = False,
    content_type: bytes = b"application/json",
) -> bytes:
    """A whole response the gate makes itself: an error, a preflight (204: no body headers), `/health`."""
    fixed: list[Header] = [(b"Cache-Control", b"no-store")]
    if status != 204:
        fixed += [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())]
    fixed.extend(headers)
    if close:
        fixed.append((b"Connection", b"close"))
    return response_head(status, reason_phrase(status), fixed) + body


def cors_headers(origin: str) -> list[Header]:
    return [(b"Access-Control-Allow-Origin", origin.encode("latin-1")), (b"Vary", b"Origin")]


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body."""
    return b"%x\r\n" % len(data) + data + b"\r\n"
