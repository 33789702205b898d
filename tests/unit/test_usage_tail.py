"""usage_tail: the usage of each format, from bodies recorded from llama-server 11434 (curl --raw, so
chunked bodies keep their framing as the relay sees it), fed whole, at every split and byte by byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llama_launcher.gate.usage_tail import TAIL_BYTES, Usage, UsageTail, unchunk_head, unchunk_tail

RECORDINGS = Path(__file__).parent / "recordings" / "usage"

# (file, body format, chunked, what llama-server reported in that body)
CASES = [
    ("chat_usage.raw", "chat", True, Usage(3, 32)),  # stream_options.include_usage: the last event's usage
    ("chat_timings.raw", "chat", True, Usage(3, 32)),  # no usage asked: the last event's timings (1 + 31 cached)
    ("completions.raw", "completions", True, Usage(3, 1)),
    ("responses.raw", "responses", True, Usage(3, 32)),
    ("messages.raw", "messages", True, Usage(3, 32)),  # output from message_delta, input from message_start
    ("chat_whole.json", "chat", False, Usage(3, 32)),
    ("responses_whole.json", "responses", False, Usage(3, 32)),
    ("messages_whole.json", "messages", False, Usage(3, 32)),
]


def read(name: str) -> bytes:
    return (RECORDINGS / name).read_bytes()


def fed(body_format: str, *pieces: bytes) -> UsageTail:
    tail = UsageTail(body_format)
    for piece in pieces:
        tail.feed(piece)
    return tail


def dechunked(body: bytes) -> bytes:
    data, at = bytearray(), 0
    while True:
        line_end = body.index(b"\r\n", at)
        size = int(body[at:line_end], 16)
        if size == 0:
            return bytes(data)
        data += body[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2


def chunked(data: bytes, size: int) -> bytes:
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)
    )
    return framed + b"0\r\n\r\n"


@pytest.mark.parametrize(("name", "body_format", "is_chunked", "expected"), CASES)
def test_each_format_whole(name: str, body_format: str, is_chunked: bool, expected: Usage) -> None:
    assert fed(body_format, read(name)).usage(chunked=is_chunked) == expected


@pytest.mark.parametrize(("name", "body_format", "is_chunked", "expected"), CASES)
def test_each_format_at_every_split(name: str, body_format: str, is_chunked: bool, expected: Usage) -> None:
    body = read(name)
    for split in range(len(body) + 1):
        assert fed(body_format, body[:split], body[split:]).usage(chunked=is_chunked) == expected, split


@pytest.mark.parametrize(("name", "body_format", "is_chunked", "expected"), CASES)
def test_each_format_byte_by_byte(name: str, body_format: str, is_chunked: bool, expected: Usage) -> None:
    body = read(name)
    assert fed(body_format, *(body[i : i + 1] for i in range(len(body)))).usage(chunked=is_chunked) == expected


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 61, 200, 4096])
@pytest.mark.parametrize(("name", "body_format", "expected"), [(c[0], c[1], c[3]) for c in CASES if c[2]])
def test_chunk_framing_anywhere(name: str, body_format: str, expected: Usage, size: int) -> None:
    """Whatever chunk sizes frame the stream (a chunk head inside the usage object included), the
    framing is taken out before the usage is read."""
    data = dechunked(read(name))
    assert fed(body_format, chunked(data, size)).usage(chunked=True) == expected


def long_stream(tokens: int) -> bytes:
    """A chat stream of `tokens` content events, then the recorded end (its usage)."""
    data = dechunked(read("chat_usage.raw"))
    event = b'data: {"choices":[{"index":0,"delta":{"content":"word "}}],"object":"chat.completion.chunk"}\n\n'
    return event * tokens + data


def test_a_long_stream_keeps_only_its_end() -> None:
    body = chunked(long_stream(5_000), 97)
    tail = UsageTail("chat")
    for at in range(0, len(body), 1000):
        tail.feed(body[at : at + 1000])
        assert len(tail.tail) <= 2 * TAIL_BYTES
    assert tail.head is None
    assert tail.usage(chunked=True) == Usage(3, 32)


def test_messages_keep_a_bounded_head_for_the_prompt() -> None:
    data = dechunked(read("messages.raw"))
    start, rest = data.split(b"\n\n", 1)
    delta = (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n'
    )
    body = chunked(start + b"\n\n" + delta * 3_000 + rest, 111)
    tail = fed("messages", *(body[i : i + 500] for i in range(0, len(body), 500)))
    assert tail.head is not None and len(tail.head) <= 2048
    assert tail.usage(chunked=True) == Usage(3, 32)


def test_generated_text_that_spells_a_usage_is_not_read_as_one() -> None:
    """A model that writes `"usage":{"completion_tokens":1}` gets it escaped inside a JSON string,
    even in an event after the real usage."""
    fake = json.dumps({"choices": [{"delta": {"content": '"usage":{"completion_tokens":1,"prompt_tokens":1}'}}]})
    data = dechunked(read("chat_usage.raw")).replace(b"data: [DONE]", f"data: {fake}\n\ndata: [DONE]".encode())
    assert fake.encode() in data
    assert fed("chat", chunked(data, 50)).usage(chunked=True) == Usage(3, 32)


def test_a_stream_cut_before_its_end_has_no_usage() -> None:
    body = read("chat_usage.raw")
    cut = body[: body.index(b'"usage"')]
    assert fed("chat", cut).usage(chunked=True) is None
    responses = read("responses.raw")
    assert fed("responses", responses[: responses.index(b"response.completed")]).usage(chunked=True) is None


def test_formats_that_do_not_generate_have_no_usage() -> None:
    assert fed("embeddings", b'{"usage":{"prompt_tokens":3,"total_tokens":3}}').usage(chunked=False) is None


def test_a_usage_with_no_count_is_none() -> None:
    assert fed("chat", b'{"usage":{"completion_tokens":"3"}}').usage(chunked=False) is None
    assert fed("chat", b'{"usage":{"completion_tokens":true}}').usage(chunked=False) is None
    assert fed("chat", b'{"usage":{"completion_tokens":-1}}').usage(chunked=False) is None
    assert fed("chat", b'{"usage":{"completion_tokens":4}}').usage(chunked=False) == Usage(4, None)


def test_unchunk_reads_what_does_not_chain_as_it_is() -> None:
    """Bytes that look like a chunk head but do not chain to the terminal chunk are data."""
    body = b'data: {"a":1}\r\nff\r\nnot a chunk'
    assert unchunk_tail(body) == body
    assert unchunk_head(b"zz\r\n") == b"zz\r\n"


def test_unchunk_head_stops_where_the_kept_bytes_stop() -> None:
    framed = chunked(b"x" * 100, 30)
    assert unchunk_head(framed[:50]) == b"x" * 40
    assert re.fullmatch(rb"x+", unchunk_head(framed[:70]))
