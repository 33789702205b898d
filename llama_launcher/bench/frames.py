"""llama-server's streamed chat format, written (for the synthetic upstream) and counted (for the client).

Pure: bytes in, bytes out. The written side reproduces what llama-server 11434 sends, byte for
byte in shape: the response head, one HTTP chunk per SSE event (the role event and the first
token share the first chunk), `data: {...}\\n\\n` events whose keys come in llama-server's order,
a last event with `finish_reason` and `timings`, `data: [DONE]`, then the zero-length chunk.

The counting side must cost the measuring client almost nothing per event, so it never parses
JSON per event: an event starts with `\\ndata: ` (after a chunk-size line's CRLF or the previous
event's blank line), a sequence JSON cannot contain, since a JSON string escapes its newlines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: llama.cpp\r\n"
    b"Access-Control-Allow-Origin: \r\n"
    b"X-Accel-Buffering: no\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Keep-Alive: timeout=5, max=100\r\n"
    b"\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"
DONE_EVENT = b"data: [DONE]\n\n"
SYSTEM_FINGERPRINT = "b0-unknown"
WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")

_EVENT_START = b"\ndata: "
_DONE_MARK = b"data: [DONE]"
_RESPONSES_DONE_MARK = b"event: response.completed"
"""How a Responses stream ends: llama-server sends no `[DONE]` there. Read from the tail, so a bench
Responses stream must keep its whole text (which the last event repeats) within the tail."""
_TAIL_BYTES = 4096


def http_chunk(payload: bytes) -> bytes:
    """One chunk of chunked transfer encoding."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def event(payload: dict[str, Any]) -> bytes:
    """One SSE event as llama-server writes it: compact JSON, no spaces, key order kept."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def chunk_object(
    delta: dict[str, Any], *, finish_reason: str | None, created: int, completion_id: str, model: str
) -> dict[str, Any]:
    """A `chat.completion.chunk` with llama-server's keys in llama-server's order."""
    return {
        "choices": [{"finish_reason": finish_reason, "index": 0, "delta": delta}],
        "created": created,
        "id": completion_id,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "object": "chat.completion.chunk",
    }


def timings(prompt_n: int, predicted_n: int, prompt_ms: float, predicted_ms: float) -> dict[str, float | int]:
    """llama-server's `timings` object, with its fields in its order."""
    return {
        "cache_n": 0,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n * 1000 / prompt_ms if prompt_ms else 0.0,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": predicted_n * 1000 / predicted_ms if predicted_ms else 0.0,
    }


@dataclass(frozen=True)
class StreamScript:
    """The HTTP chunks of one synthetic stream, built once so that writing one costs a lookup.

    `token_chunk(i)` is the i-th token's chunk (the first one also carries the role event);
    `closing(...)` is the final event, `[DONE]` and the zero-length chunk, in one write.
    """

    completion_id: str
    created: int
    model: str
    first: bytes = field(init=False)
    tokens: tuple[bytes, ...] = field(init=False)

    def __post_init__(self) -> None:
        def token_event(word: str) -> bytes:
            return event(self._chunk({"content": word}, None))

        role = event(self._chunk({"role": "assistant", "content": None}, None))
        object.__setattr__(self, "first", http_chunk(role + token_event(WORDS[0])))
        object.__setattr__(self, "tokens", tuple(http_chunk(token_event(word)) for word in WORDS))

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return chunk_object(
            delta, finish_reason=finish_reason, created=self.created, completion_id=self.completion_id, model=self.model
        )

    def token_chunk(self, index: int) -> bytes:
        return self.first if index == 0 else self.tokens[index % len(self.tokens)]

    def closing(self, *, predicted_n: int, predicted_ms: float, prompt_n: int = 16, prompt_ms: float = 1.0) -> bytes:
        final = self._chunk({}, "length")
        final["timings"] = timings(prompt_n, predicted_n, prompt_ms, predicted_ms)
        return http_chunk(event(final)) + http_chunk(DONE_EVENT) + LAST_CHUNK


class FrameCounter:
    """Counts the SSE events of a response body as it arrives, whatever the read boundaries.

    `chunks` counts data events other than `[DONE]` (a Responses stream ends with its
    `response.completed` event instead); `final()` reads the last event that carries
    `timings` or `usage`, from a bounded tail, once the stream is over.
    """

    __slots__ = ("_carry", "_tail", "events")

    def __init__(self) -> None:
        self.events = 0
        self._carry = b"\n"
        self._tail = b""

    def feed(self, data: bytes) -> int:
        """Count the events that start in `data`; returns how many."""
        joined = self._carry + data
        found = joined.count(_EVENT_START)
        self.events += found
        self._carry = joined[-(len(_EVENT_START) - 1) :]
        self._tail = (self._tail + data)[-_TAIL_BYTES:]
        return found

    @property
    def done(self) -> bool:
        return _DONE_MARK in self._tail or _RESPONSES_DONE_MARK in self._tail

    @property
    def chunks(self) -> int:
        return self.events - 1 if self.done else self.events

    def final(self) -> dict[str, Any] | None:
        """The last event holding `timings` or `usage`, parsed; None when the tail holds none."""
        for line in reversed(self._tail.split(b"\n")):
            if line.startswith(b"data: {") and (b'"timings"' in line or b'"usage"' in line):
                try:
                    value = json.loads(line[6:])
                except ValueError:
                    return None
                return value if isinstance(value, dict) else None
        return None

    def tokens(self) -> int:
        """Generated tokens as the server counted them, else one per content event."""
        final = self.final()
        if final is not None:
            usage = final.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                return usage["completion_tokens"]
            found = final.get("timings")
            if isinstance(found, dict) and isinstance(found.get("predicted_n"), int):
                return found["predicted_n"]
        return max(self.chunks - 2, 0)
