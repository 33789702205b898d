"""The bench's route comparison (issue 27): its bodies pass the gate's shapers, a Responses stream is
counted to its end, and the figures render."""

from __future__ import annotations

import json

from llama_direct.lanes import CHAT, RESPONSES
from llama_direct.tokens import Grant
from llama_launcher.bench.frames import FrameCounter, http_chunk
from llama_launcher.bench.routes import body, render
from llama_launcher.gate.responses_shaping import shape_responses_body
from llama_launcher.gate.shaping import ShapingPolicy, shape_chat_body


def test_each_routes_body_is_forwarded_by_the_gate_as_sent() -> None:
    """The gate adds the model and keeps the rest, so raw and direct get the same request."""
    for route, shaper in ((CHAT, shape_chat_body), (RESPONSES, shape_responses_body)):
        grant = Grant(routes=(route.key,), model="smollm2", max_tokens=64)
        sent = body(route, 64)
        shaped = json.loads(shaper(json.dumps(sent).encode(), grant, ShapingPolicy()))
        assert shaped == {**sent, "model": "smollm2"}, route.name


def _event(name: str, data: dict[str, object]) -> bytes:
    return http_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


def test_a_responses_stream_is_done_at_its_completed_event_and_counts_its_tokens() -> None:
    """llama-server ends a Responses stream with `response.completed` (no `[DONE]`), whose top-level
    `timings` hold the tokens generated."""
    counter = FrameCounter()
    counter.feed(_event("response.created", {"type": "response.created"}))
    for word in ("a", "b", "c"):
        counter.feed(_event("response.output_text.delta", {"type": "response.output_text.delta", "delta": word}))
    assert not counter.done
    counter.feed(_event("response.completed", {"type": "response.completed", "response": {"output": []},
                                               "timings": {"predicted_n": 3}}) + b"0\r\n\r\n")
    assert counter.done
    assert counter.tokens() == 3


def test_the_figures_render_one_row_per_route() -> None:
    found = {"p1": {"1": {"chat": {"median_ratio": 0.95}, "responses": {"median_ratio": 0.94}}},
             "p3": {"chat": {"added_p50_ms": 1.5, "added_p99_ms": 3.0}}}
    table = render(found).splitlines()
    assert table[2] == "| chat | 0.950× | +1.50 / +3.00 ms |"
    assert table[3] == "| responses | 0.940× | – |"
