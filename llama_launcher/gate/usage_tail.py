"""What a generation used, read from the bytes of its answer's end (pure: no I/O, no clock).

The relay passes every byte through as it arrives and never alters one; beside it, `UsageTail`
keeps a copy of only the last `TAIL_BYTES` of the body (and, for Messages, the first `HEAD_BYTES`),
so what it holds is bounded however long the answer is. When the answer has ended, `usage` finds
what llama-server reported, in each format's own place:

- chat and completions: the `usage` object of the last event (a stream carries it when the request
  asked `stream_options.include_usage`; a non-streaming answer always does), or else the `timings`
  llama-server puts in the last event of every stream (`predicted_n`; `prompt_n` + `cache_n`);
- Responses: `response.completed`'s `response.usage` (`output_tokens`, `input_tokens`), or the
  non-streaming answer's `usage`;
- Messages: `message_delta`'s `usage.output_tokens`; the prompt's tokens are in `message_start`,
  the stream's first event, hence the head (`input_tokens` + the cache's read and creation).

No SSE parsing is needed: in JSON a quote inside a string is always escaped, so the bytes
`"usage":` can only be a key, and llama-server writes the top-level `usage` (and `timings`) after
every generated text in each format. So the last such key in the tail is the answer's own, and its
object is read with the standard library's JSON decoder. A chunked answer's tail holds the chunk
framing as relayed; it is removed only where the chain of chunk sizes checks out to the terminal
chunk, so a body that merely looks like framing is read as it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TypeGuard

from llama_direct.budgets import GENERATING_FORMATS

TAIL_BYTES = 4096
"""The end kept: each format's usage, and what follows it (timings, `[DONE]`, `message_stop`, the
terminal chunk), take well under a kilobyte from llama-server."""
HEAD_BYTES = 2048
"""The start kept for Messages: `message_start`, which alone says the prompt's tokens."""

_DECODER = json.JSONDecoder(parse_float=str)
"""Floats are kept as their text: no count is ever a float (`_is_count` takes ints alone), and llama-server's
`timings` holds six of them, whose parsing was a third of the object's."""
_CHUNK_HEAD = re.compile(rb"([0-9a-fA-F]{1,8})(?:;[^\r\n]*)?\r\n")
_CUT_CHUNK_HEAD = re.compile(rb"[0-9a-fA-F]{0,8}(?:;[^\r\n]*)?\r?")
_FRAMING_START = re.compile(rb"\r\n(?=[0-9a-fA-F]{1,8}(?:;[^\r\n]*)?\r\n)")
"""A chunk's end followed by a chunk head: where a tail's framing may start (`unchunk_tail`)."""


@dataclass(frozen=True)
class Usage:
    """Tokens one answer used, as llama-server reported them; `prompt_tokens` None: not in what was kept."""

    completion_tokens: int
    prompt_tokens: int | None


class UsageTail:
    """A bounded copy of a body's end (and a Messages body's start), fed the relayed bytes as they are."""

    __slots__ = ("body_format", "head", "tail")

    def __init__(self, body_format: str) -> None:
        self.body_format = body_format
        self.head: bytearray | None = bytearray() if body_format == "messages" else None
        self.tail = bytearray()

    def feed(self, data: bytes) -> None:
        """The next body bytes, as relayed: kept only while they are among the first or last few."""
        head = self.head
        if head is not None and len(head) < HEAD_BYTES:
            head += data[: HEAD_BYTES - len(head)]
        tail = self.tail
        tail += data
        if len(tail) > 2 * TAIL_BYTES:
            del tail[: len(tail) - TAIL_BYTES]

    def usage(self, *, chunked: bool) -> Usage | None:
        """The answer's usage, once its end was relayed; None when none is found in what was kept."""
        if self.body_format not in GENERATING_FORMATS:
            return None
        body = bytes(self.tail[-TAIL_BYTES:])
        if chunked:
            body = unchunk_tail(body)
        if self.body_format == "messages":
            head = bytes(self.head or b"")
            return _messages_usage(body, unchunk_head(head) if chunked else head)
        usage = last_object(body, b'"usage":')
        if self.body_format == "responses":
            return _counted(usage, "output_tokens", ("input_tokens",))
        found = _counted(usage, "completion_tokens", ("prompt_tokens",))
        if found is not None:
            return found
        return _counted(last_object(body, b'"timings":'), "predicted_n", ("prompt_n", "cache_n"))


def _messages_usage(tail: bytes, head: bytes) -> Usage | None:
    """`message_delta`'s output tokens (a non-streaming answer: its `usage`), and the prompt's from
    `message_start` when the head holds it (a short answer's tail may hold it too)."""
    prompt_fields = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    usage = last_object(tail, b'"usage":')
    found = _counted(usage, "output_tokens", prompt_fields)
    if found is None or found.prompt_tokens is not None:
        return found
    start = first_object(head, b'"usage":') if b'"message_start"' in head else None
    started = _counted(start, "output_tokens", prompt_fields)
    prompt = started.prompt_tokens if started is not None else None
    return Usage(found.completion_tokens, prompt)


def _counted(usage: dict[str, object] | None, completion: str, prompt_fields: tuple[str, ...]) -> Usage | None:
    """A `Usage` from an object holding `completion` as a count; the prompt's fields summed when the
    first is there (the others are the cache's parts, which some answers leave out)."""
    if usage is None:
        return None
    generated = usage.get(completion)
    if not _is_count(generated):
        return None
    prompt = usage.get(prompt_fields[0])
    if not _is_count(prompt):
        return Usage(generated, None)
    for name in prompt_fields[1:]:
        part = usage.get(name, 0)
        if _is_count(part):
            prompt += part
    return Usage(generated, prompt)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def last_object(body: bytes, key: bytes) -> dict[str, object] | None:
    """The JSON object after the last `key` in `body` that is followed by a whole object, or None."""
    end = len(body)
    while (at := body.rfind(key, 0, end)) >= 0:
        found = _object_at(body, at + len(key))
        if found is not None:
            return found
        end = at
    return None


def first_object(body: bytes, key: bytes) -> dict[str, object] | None:
    """The JSON object after the first `key` in `body` that is followed by a whole object, or None."""
    start = 0
    while (at := body.find(key, start)) >= 0:
        found = _object_at(body, at + len(key))
        if found is not None:
            return found
        start = at + len(key)
    return None


def _object_at(body: bytes, at: int) -> dict[str, object] | None:
    try:
        value, _ = _DECODER.raw_decode(body[at:].decode("utf-8", "replace").lstrip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def unchunk_tail(tail: bytes) -> bytes:
    """A chunked body's last bytes without their framing: the first chunk head after which the
    chain of sizes reaches the terminal chunk is where framing starts (what precedes it is the end of
    a chunk's data); with no such chain, the bytes as they are."""
    for match in _FRAMING_START.finditer(tail):
        data = _chain(tail, match.end(), to_end=True)
        if data is not None:
            return tail[: match.start()] + data
    return tail


def unchunk_head(head: bytes) -> bytes:
    """A chunked body's first bytes without their framing, up to where the kept bytes stop."""
    data = _chain(head, 0, to_end=False)
    return head if data is None else data


def _chain(body: bytes, at: int, *, to_end: bool) -> bytes | None:
    """The chunks' data from a chunk head at `at`; None when the framing breaks, or (`to_end`) when
    it does not end in the terminal chunk."""
    parts: list[bytes] = []
    while True:
        match = _CHUNK_HEAD.match(body, at)
        if match is None:
            cut_head = _CUT_CHUNK_HEAD.fullmatch(body, at) is not None
            return None if to_end or not cut_head else b"".join(parts)
        size = int(match.group(1), 16)
        start = match.end()
        if size == 0:
            return b"".join(parts)
        if start + size > len(body):
            return None if to_end else b"".join([*parts, body[start:]])
        parts.append(body[start : start + size])
        if body[start + size : start + size + 2] != b"\r\n":
            if to_end or start + size + 2 <= len(body):
                return None
            return b"".join(parts)
        at = start + size + 2
