"""The gate's body shapers, one per body format the lane registry names (`LaneRoute.body`).

A lane route that takes a body names its format in `llama_direct.lanes`; the lane plan (`lane_plan`)
looks the shaper up here and never asks which route it serves. So a new route in a new format is its registry
entry, its shaper module, and one line in `SHAPERS`; `tests/unit/test_shapers.py` fails on a
registry format with no shaper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from llama_direct.lanes import BodyFormat
from llama_direct.tokens import Grant
from llama_launcher.gate.completions_shaping import shape_completions_body
from llama_launcher.gate.embeddings_shaping import shape_embeddings_body
from llama_launcher.gate.messages_shaping import shape_messages_body, shape_messages_count_body
from llama_launcher.gate.rerank_shaping import shape_rerank_body
from llama_launcher.gate.responses_shaping import shape_responses_body, shape_responses_count_body
from llama_launcher.gate.shaping import ShapingPolicy, shape_chat_body, shape_chat_count_body

Shaper = Callable[[bytes, Grant, ShapingPolicy], bytes]
"""(the client's body, the grant, the limits of the upstreams it may go to) -> the body llama-server
gets, or a `RequestRefusal`. Pure, so it may run in a thread."""

SHAPERS: Mapping[BodyFormat, Shaper] = {
    "chat": shape_chat_body,
    "chat_count": shape_chat_count_body,
    "responses": shape_responses_body,
    "responses_count": shape_responses_count_body,
    "messages": shape_messages_body,
    "messages_count": shape_messages_count_body,
    "completions": shape_completions_body,
    "embeddings": shape_embeddings_body,
    "rerank": shape_rerank_body,
}

SHAPE_IN_THREAD_BYTES = 256 * 1024
"""Bodies above this are shaped off the event loop, so parsing them stalls no stream. Any body for a
vision model is shaped there too, whatever its size: a 1.5 KB WebP may take a second to decode.
(Without vision an image is refused before a byte of it is decoded.)"""

