"""The request half's parser: one request head, then its body, read with httptools (llhttp).

Pure: no sockets, no asyncio. `read_head` takes a whole head (`http1.find_head_end` found its end)
and returns a `Request`, or raises the `Refusal` that answers it. `BodyReader` then takes the bytes
that follow, as they arrive, and says where the body ends, so a pipelined next request is kept whole.

llhttp is fast (a lane head in 2-3 µs, where h11 took 33-46 µs) but lenient where h11 was strict,
so the gate adds what h11 refused: the framing checks of `http1.check_raw_head` run first; the
request line must be h11's (`method SP target SP HTTP/d.d`: one space each, a token method, a
visible-ASCII target, so no HTTP/0.9 line); HTTP/1.1 needs exactly one `Host`, HTTP/1.0 at most one;
and a value loses its trailing blanks, as h11 gave it. llhttp refuses control characters in a value
and any method it does not know (h11 let an unknown token through, to be refused later).

A body is framed by the gate's own reading of the head: `Content-Length` bytes are counted, never
parsed, and a chunked body is de-chunked by an llhttp parser of its own, fed a fixed head. So the
client's `Upgrade` or `CONNECT` (after which llhttp stops reading a body) never moves where the gate
thinks the request ends. A chunked message ends with CRLF CRLF, so the bytes are fed in pieces that
end at each CRLF CRLF, and what follows the end is never fed: it is the next request.
"""

from __future__ import annotations

import re

import httptools

from llama_direct.refusals import BAD_BODY, BAD_REQUEST, RequestRefusal, VersionNotSupported
from llama_launcher.gate.http1 import Header, check_raw_head

_REQUEST_LINE = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+ [\x21-\x7e]+ HTTP/([0-9]\.[0-9])")
"""h11's request line (RFC 9112 3): the gate held clients to it, so it still does."""

_CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: gate\r\nTransfer-Encoding: chunked\r\n\r\n"
"""What a body parser is fed first: a head the gate wrote, so only the client's chunks are parsed."""


class Request:
    """One parsed request head: the method and target as sent, headers with lower-case names."""

    __slots__ = ("chunked", "expects_continue", "headers", "http_version", "length", "method", "raw_headers",
                 "target")

    def __init__(self, method: bytes, target: bytes, http_version: bytes, raw_headers: list[Header],
                 headers: list[Header]) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.raw_headers = raw_headers
        """The names as the client wrote them: what the broker receives."""
        self.headers = headers
        self.length: int | None = None
        """The declared body length; `check_raw_head` has refused a malformed or repeated one."""
        self.chunked = False
        """`check_raw_head` has refused any other coding, both framings at once, and HTTP/1.0 with one."""
        self.expects_continue = False
        """RFC 9110 10.1.1: an HTTP/1.0 client's expectation is ignored."""
        hosts = 0
        for name, value in headers:
            if name == b"content-length":
                self.length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = True
            elif name == b"host":
                hosts += 1
            elif name == b"expect" and http_version == b"1.1":
                self.expects_continue |= any(part.strip().lower() == b"100-continue" for part in value.split(b","))
        if hosts > 1 or (hosts == 0 and http_version == b"1.1"):
            raise RequestRefusal(BAD_REQUEST)  # as h11 did (RFC 9112 3.2)


class _Head:
    """The httptools protocol for one head: the target and the header lines."""

    __slots__ = ("headers", "raw", "target")

    def __init__(self) -> None:
        self.target = b""
        self.raw: list[Header] = []
        self.headers: list[Header] = []

    def on_url(self, url: bytes) -> None:
        self.target = url

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.rstrip(b" \t")  # llhttp keeps trailing blanks; RFC 9112 5.1 drops them, as h11 did
        self.raw.append((name, value))
        self.headers.append((name.lower(), value))


def read_head(head: bytes) -> Request:
    """`head` (request line to blank line, both included) as a `Request`, or the refusal that answers it."""
    check_raw_head(head)
    line = _REQUEST_LINE.fullmatch(head, 0, head.index(b"\r\n"))
    if line is None:
        raise RequestRefusal(BAD_REQUEST)
    version = line.group(1)
    if version != b"1.1" and version != b"1.0":
        raise VersionNotSupported()
    parsed = _Head()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT or Upgrade: the head is whole, and the gate never switches protocols
    except httptools.HttpParserError:
        raise RequestRefusal(BAD_REQUEST) from None
    return Request(parser.get_method(), parsed.target, version, parsed.raw, parsed.headers)


class BodyReader:
    """One request's body as it arrives: what of it each read holds, its end, and the bytes past it."""

    __slots__ = ("done", "expects_continue", "parser", "pieces", "remaining", "tail", "trailing")

    def __init__(self, request: Request) -> None:
        self.remaining = request.length or 0
        self.done = not request.chunked and not self.remaining
        self.expects_continue = request.expects_continue
        """Whether a `100 Continue` is owed: asked for, and no body byte has come yet."""
        self.trailing = b""
        """Bytes past the body's end: the next request, pipelined."""
        self.pieces: list[bytes] = []
        self.tail = b""
        self.parser: httptools.HttpRequestParser | None = None
        if request.chunked:
            self.parser = httptools.HttpRequestParser(self)
            self.parser.feed_data(_CHUNKED_HEAD)

    def feed(self, data: bytes) -> bytes:
        """The body bytes `data` holds (de-chunked); past the end, `done` is set and the rest kept in `trailing`.

        Raises `RequestRefusal(BAD_BODY)` where the chunked framing is not valid.
        """
        if self.done:
            self.trailing += data
            return b""
        if self.parser is not None:
            body = self._dechunk(data)
        elif len(data) < self.remaining:
            self.remaining -= len(data)
            body = data
        else:
            body, self.trailing = data[: self.remaining], data[self.remaining :]
            self.remaining = 0
            self.done = True
        if body:
            self.expects_continue = False
        return body

    def _dechunk(self, data: bytes) -> bytes:
        parser = self.parser
        assert parser is not None
        view = memoryview(data)
        start = 0
        try:
            while start < len(data) and not self.done:
                end = self._message_end(data, start)
                parser.feed_data(view[start:end])
                start = end
        except httptools.HttpParserError:
            raise RequestRefusal(BAD_BODY) from None
        self.tail = (self.tail + data[max(0, start - 3) : start])[-3:]
        if self.done:
            self.trailing = data[start:]
        body = b"".join(self.pieces)
        self.pieces.clear()
        return body

    def _message_end(self, data: bytes, start: int) -> int:
        """Where feeding from `start` must pause: just past the next CRLF CRLF, else the end of `data`.

        The message can end only there; the 3 bytes fed last (`tail`) may hold that CRLF CRLF's start.
        """
        if start == 0 and self.tail:
            edge = (self.tail + data[:3]).find(b"\r\n\r\n")
            if edge >= 0:
                return edge + 4 - len(self.tail)
        at = data.find(b"\r\n\r\n", max(0, start - 3))
        return at + 4 if at >= 0 else len(data)

    # httptools callbacks, for the body parser

    def on_body(self, piece: bytes) -> None:
        self.pieces.append(piece)

    def on_message_complete(self) -> None:
        self.done = True
