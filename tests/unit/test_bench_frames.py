"""The synthetic upstream's stream format against a recorded llama-server stream, and the client's counter."""

from __future__ import annotations

import json
import random

import pytest

from llama_launcher.bench.frames import RESPONSE_HEAD, FrameCounter, StreamScript, http_chunk

# Recorded from llama-server 11434 (SmolLM2-135M, --alias smollm2), one streamed chat request.
RECORDED_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nAccess-Control-Allow-Origin: \r\nX-Accel-Buffering: no\r\n"
    b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=100\r\n\r\n"
)
RECORDED_ROLE = (
    '{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":1795629418,'
    '"id":"chatcmpl-wsTy1cxmTx5KKFnxLORtzMfW1w5Zl3PB","model":"smollm2","system_fingerprint":"b0-unknown",'
    '"object":"chat.completion.chunk"}'
)
RECORDED_TOKEN = (
    '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"1"}}],"created":1795629418,'
    '"id":"chatcmpl-wsTy1cxmTx5KKFnxLORtzMfW1w5Zl3PB","model":"smollm2","system_fingerprint":"b0-unknown",'
    '"object":"chat.completion.chunk"}'
)
RECORDED_FINAL = (
    '{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1795629419,'
    '"id":"chatcmpl-wsTy1cxmTx5KKFnxLORtzMfW1w5Zl3PB","model":"smollm2","system_fingerprint":"b0-unknown",'
    '"object":"chat.completion.chunk","timings":{"cache_n":0,"prompt_n":44,"prompt_ms":264.916,'
    '"prompt_per_token_ms":6.020818181818182,"prompt_per_second":166.09038336680305,"predicted_n":64,'
    '"predicted_ms":482.087,"predicted_per_token_ms":7.652174603174603,"predicted_per_second":130.68180639594098}}'
)
RECORDED_START = b"1e6\r\ndata: " + RECORDED_ROLE.encode() + b"\n\ndata: " + RECORDED_TOKEN.encode() + b"\n\n\r\n"
RECORDED_END = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


def _shape(value: object) -> object:
    """Keys in order, recursively, with leaf values replaced by their type: what a parser depends on."""
    if isinstance(value, dict):
        return [(key, _shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def _events(body: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]


def _script() -> StreamScript:
    return StreamScript("chatcmpl-abc", 1795629418, "smollm2")


def test_head_is_llama_servers_head() -> None:
    assert RESPONSE_HEAD == RECORDED_HEAD


def test_first_chunk_holds_role_and_first_token_like_llama_server() -> None:
    first = _script().token_chunk(0)
    size, _, rest = first.partition(b"\r\n")
    assert int(size, 16) == len(rest) - 2
    role, token = _events(first)
    assert _shape(role) == _shape(json.loads(RECORDED_ROLE))
    assert _shape(token) == _shape(json.loads(RECORDED_TOKEN))
    assert first.endswith(b"\n\n\r\n")


def test_token_chunks_match_the_recorded_token_chunk() -> None:
    script = _script()
    for index in (1, 2, 17):
        (token,) = _events(script.token_chunk(index))
        assert _shape(token) == _shape(json.loads(RECORDED_TOKEN))


def test_closing_matches_the_recorded_final_chunk_done_and_last_chunk() -> None:
    closing = _script().closing(predicted_n=64, predicted_ms=482.0)
    (final,) = _events(closing)
    assert _shape(final) == _shape(json.loads(RECORDED_FINAL))
    assert final["timings"]["predicted_n"] == 64
    assert final["choices"][0]["finish_reason"] == "length"
    assert closing.endswith(RECORDED_END)


def test_http_chunk_frames_a_payload_in_hex() -> None:
    assert http_chunk(b"data: [DONE]\n\n") == b"e\r\ndata: [DONE]\n\n\r\n"


def test_recorded_first_chunk_length_is_its_hex_size() -> None:
    size, _, rest = RECORDED_START.partition(b"\r\n")
    assert int(size, 16) == len(rest) - 2


def _synthetic_stream(tokens: int) -> bytes:
    script = _script()
    return b"".join(script.token_chunk(i) for i in range(tokens)) + script.closing(predicted_n=tokens, predicted_ms=1.0)


def test_counter_counts_events_and_reads_the_final_chunk() -> None:
    counter = FrameCounter()
    counter.feed(_synthetic_stream(5))
    assert counter.events == 8
    assert counter.chunks == 7
    assert counter.done
    assert counter.tokens() == 5


def test_counter_on_the_recorded_stream_ends() -> None:
    counter = FrameCounter()
    counter.feed(RECORDED_START)
    counter.feed(b"bc\r\ndata: " + RECORDED_FINAL.encode()[:170])
    assert counter.chunks == 3
    assert not counter.done
    counter.feed(RECORDED_FINAL.encode()[170:] + b"\n\n\r\n" + RECORDED_END)
    assert (counter.chunks, counter.done, counter.tokens()) == (3, True, 64)


@pytest.mark.parametrize("seed", range(20))
def test_counter_is_the_same_for_every_split(seed: int) -> None:
    body = _synthetic_stream(40)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(body)), 30))
    counter = FrameCounter()
    found = 0
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        found += counter.feed(body[start:end])
    assert (found, counter.chunks, counter.tokens(), counter.done) == (43, 42, 40, True)


def test_counter_byte_at_a_time() -> None:
    body = _synthetic_stream(3)
    counter = FrameCounter()
    for index in range(len(body)):
        counter.feed(body[index : index + 1])
    assert (counter.chunks, counter.tokens()) == (5, 3)


def test_counter_ignores_data_inside_json_strings() -> None:
    counter = FrameCounter()
    counter.feed(b'5a\r\ndata: {"choices":[{"delta":{"content":"data: x\\ndata: y"}}]}\n\n\r\n')
    assert counter.events == 1


def test_counter_without_a_final_chunk_counts_content_events() -> None:
    counter = FrameCounter()
    script = _script()
    counter.feed(b"".join(script.token_chunk(i) for i in range(4)))
    assert (counter.chunks, counter.done, counter.final(), counter.tokens()) == (5, False, None, 3)
