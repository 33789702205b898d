"""A route format's shaper called as the gate calls it: the grant for its path, a policy, the body as
JSON; and the small images the shaping tests send."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from llama_direct.refusals import RequestRefusal
from llama_direct.tokens import Grant
from llama_launcher.gate.shaping import ShapingPolicy

POLICY = ShapingPolicy()
VISION = ShapingPolicy(vision=True)
HI = [{"role": "user", "content": "hi"}]

Shaper = Callable[[bytes, Grant, ShapingPolicy], bytes]


def grant_for(path: str) -> Grant:
    """A grant of `POST path` for the model `smollm2`, capped at 256 tokens."""
    return Grant(routes=(("POST", path),), model="smollm2", max_tokens=256)


@dataclass(frozen=True)
class RouteShaper:
    """One format's shaper (and its token-count variant, where the format has one) under one grant."""

    shaper: Shaper
    grant: Grant
    count_shaper: Shaper | None = None

    def shape_bytes(self, body: bytes, policy: ShapingPolicy = POLICY, *, count: bool = False) -> bytes:
        shaper = self.count_shaper if count and self.count_shaper is not None else self.shaper
        return shaper(body, self.grant, policy)

    def shape(self, request: dict[str, Any], policy: ShapingPolicy = POLICY, *, count: bool = False) -> Any:
        return json.loads(self.shape_bytes(json.dumps(request).encode(), policy, count=count))

    def refused(self, body: bytes | dict[str, Any], policy: ShapingPolicy = POLICY) -> RequestRefusal:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        with pytest.raises(RequestRefusal) as caught:
            self.shape_bytes(raw, policy)
        return caught.value


def png_base64(size: tuple[int, int] = (2, 2)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def png_url(size: tuple[int, int] = (2, 2)) -> str:
    return "data:image/png;base64," + png_base64(size)
