"""The chat shaper called as the gate calls it, with one grant and policy, for the chat shaping tests."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from llama_direct.refusals import (
    RequestRefusal,
)
from llama_direct.tokens import Grant
from llama_launcher.gate.shaping import (
    ShapingPolicy,
    shape_chat_body,
)

GRANT = Grant(routes=(("POST", "/v1/chat/completions"),), model="smollm2", max_tokens=256)
POLICY = ShapingPolicy()
VISION = ShapingPolicy(vision=True)
HI = [{"role": "user", "content": "hi"}]


def shape_bytes(body: bytes, policy: ShapingPolicy = POLICY) -> bytes:
    return shape_chat_body(body, GRANT, policy)


def shape(request: dict, policy: ShapingPolicy = POLICY) -> dict:
    return json.loads(shape_bytes(json.dumps(request).encode(), policy))


def refused(body: bytes | dict, policy: ShapingPolicy = POLICY) -> RequestRefusal:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestRefusal) as caught:
        shape_bytes(raw, policy)
    return caught.value


def png_url(size: tuple[int, int] = (2, 2)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
