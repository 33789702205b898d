"""Images on a real vision path (issue 25): the gate's image checks in front of a REAL llama-server
that has a projector loaded, not a fake that merely says `vision: true`.

The projector is `tiny_mmproj`'s: the layout `globalmm` writes (gemma3: SigLIP tower, pooling, one
matrix into SmolLM2's 576-wide embeddings) at a toy size with random weights, because globalmm
itself needs torch, transformers and gigabytes from Hugging Face (docs/security.md says why). So
llama-server reports `modalities.vision: true`, decodes each forwarded image with its own
stb_image and runs it through a vision tower into the prompt; what the model then says about
the picture means nothing, and nothing here asks.

Each request goes through the whole stack (`serve --upstream`, the gate in front of a llama-server
this module starts behind a recording `Forwarder`), so a test sees the exact bytes llama-server
was given, and that a refused image never reached it.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from forwarder import Forwarder
from hostile_support import SVG, bomb_png, data_url
from PIL import Image, PngImagePlugin
from recorded_lane import fresh_token, stack_in_front
from stack import Stack
from tiny_mmproj import write_tiny_mmproj

from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

ALIAS = "smollm2-vision"
MAX_TOKENS = 4
CHAT = b"POST /v1/chat/completions "
SECRET = "the client's own metadata"


@dataclass
class Lane:
    """One stack in front of one llama-server, with what crossed between them."""

    stack: Stack
    forwarder: Forwarder
    server: LlamaServer

    def token(self) -> str:
        """A fresh chat token; a refused request spends its token, so each request gets its own."""
        return fresh_token(self.stack, MAX_TOKENS, within=60)

    def chat(self, *urls: str) -> httpx.Response:
        content: list[dict[str, Any]] = [{"type": "text", "text": "What is in the picture?"}]
        content += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS, "stream": False}
        return httpx.post(f"{self.stack.base}/direct/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {self.token()}"})

    def chats_forwarded(self) -> list[dict[str, Any]]:
        """The body of every chat request llama-server received, as it received it."""
        return [_request_json(bytes(sent)) for sent in list(self.forwarder.sent) if sent.startswith(CHAT)]


def _request_json(raw: bytes) -> dict[str, Any]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    fields = {name.strip().lower(): value.strip() for name, value in fields.items()}
    if b"content-length" in fields:
        return dict(json.loads(rest[: int(fields[b"content-length"])]))
    assert fields.get(b"transfer-encoding", b"").lower() == b"chunked", head
    body = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return dict(json.loads(body))
        body, rest = body + rest[:size], rest[size + 2 :]


def _start_lane(binary: Path, model: Path, mmproj: Path | None) -> Iterator[Lane]:
    options = ServerOptions(binary=binary, model=model, alias=ALIAS, max_tokens=256, ctx_size=2048, parallel=1,
                            mmproj=mmproj)
    with stack_in_front(options, "--max-tokens", "64", record=True) as (stack, forwarder, server):
        yield Lane(stack, forwarder, server)


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mmproj(tmp_path_factory.mktemp("mmproj") / "smollm2-tiny-mmproj.gguf")


@pytest.fixture(scope="module")
def vision(llama_server_binary: Path, model_path: Path, mmproj: Path) -> Iterator[Lane]:
    yield from _start_lane(llama_server_binary, model_path, mmproj)


@pytest.fixture(scope="module")
def text_only(llama_server_binary: Path, model_path: Path) -> Iterator[Lane]:
    yield from _start_lane(llama_server_binary, model_path, None)


def _png() -> bytes:
    """A PNG the gate must not pass on as it is: text metadata, an ICC profile, the slowest zlib level."""
    image = Image.new("RGB", (40, 30), (200, 30, 40))
    image.paste((20, 160, 60), (0, 0, 20, 15))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, icc_profile=SECRET.encode() * 4, compress_level=9)
    return out.getvalue()


def _jpeg() -> bytes:
    """A JPEG with an EXIF block and a comment, both of which the gate drops."""
    image = Image.new("RGB", (40, 30), (30, 40, 200))
    exif = Image.Exif()
    exif[0x010E] = SECRET  # ImageDescription
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=75, exif=exif.tobytes(), comment=SECRET.encode())
    return out.getvalue()


def _payload(url: str) -> bytes:
    prefix, _, b64 = url.partition(",")
    assert prefix.endswith(";base64"), prefix
    return base64.b64decode(b64, validate=True)


def _image_urls(body: dict[str, Any]) -> list[str]:
    return [part["image_url"]["url"] for message in body["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part.get("type") == "image_url"]


def _refusal(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["reason"]


def test_the_projector_gives_llama_server_vision(vision: Lane) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(vision.server.address)), timeout=10) as client:
        props = client.get("http://llama/props", headers={"Authorization": vision.server.authorization().decode()})
    assert props.json()["modalities"]["vision"] is True
    assert vision.stack.gate_health()["vision"] is True
    # An image really goes into the prompt: its tokens (four, from this projector) and its markers.
    plain, with_image = vision.chat(), vision.chat(data_url(_png(), "image/png"))
    assert plain.status_code == with_image.status_code == 200, with_image.text
    assert with_image.json()["usage"]["prompt_tokens"] >= plain.json()["usage"]["prompt_tokens"] + 4


@pytest.mark.parametrize(("kind", "mime", "make"), [("PNG", "image/png", _png), ("JPEG", "image/jpeg", _jpeg)])
def test_an_image_is_reencoded_and_answered(vision: Lane, kind: str, mime: str, make: Any) -> None:
    sent = make()
    before = len(vision.chats_forwarded())
    response = vision.chat(data_url(sent, mime))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["message"]["content"]
    forwarded = vision.chats_forwarded()[before:]
    assert len(forwarded) == 1
    [url] = _image_urls(forwarded[0])
    assert url.startswith(f"data:{mime};base64,")
    got = _payload(url)
    assert got != sent
    assert SECRET.encode() not in got
    with Image.open(io.BytesIO(got)) as image:
        assert (image.format, image.size) == (kind, (40, 30))
        assert not image.getexif()
        assert not {"Comment", "comment", "icc_profile", "exif"} & set(image.info)
        assert max(abs(a - b) for a, b in zip(image.convert("RGB").getpixel((30, 25)),
                                               Image.open(io.BytesIO(sent)).convert("RGB").getpixel((30, 25)),
                                               strict=True)) < 8


def _blank_png(width: int, height: int) -> bytes:
    """A real one-bit PNG: megapixels that cost a few KB on the wire."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")
    return out.getvalue()


def _truncated_png() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(out, format="PNG")
    whole = out.getvalue()
    return whole[: len(whole) // 2]


REFUSED: dict[str, tuple[Any, int, str]] = {
    # 7,000 x 6,000 = 42 MP, over the 40 MP an image may hold.
    "over_the_pixel_limit": (lambda: [data_url(_blank_png(7_000, 6_000), "image/png")], 400,
                             "image_too_many_pixels"),
    # 30 MP and 30 MP: each within its own cap, together over the request's 48 MP.
    "over_the_request_pixel_budget": (lambda: [data_url(_blank_png(6_000, 5_000), "image/png")] * 2, 400,
                                      "images_too_many_pixels"),
    "a_decompression_bomb": (lambda: [data_url(bomb_png(), "image/png")], 400, "image_too_many_pixels"),
    "an_svg": (lambda: [data_url(SVG, "image/svg+xml")], 400, "bad_image"),
    "a_truncated_png": (lambda: [data_url(_truncated_png(), "image/png")], 400, "bad_image"),
    "nine_images": (lambda: [data_url(_png(), "image/png")] * 9, 400, "too_many_images"),
    "a_remote_url": (lambda: ["http://127.0.0.1:9/cat.png"], 400, "remote_image"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_hostile_image_is_refused_by_the_gate_and_never_reaches_llama_server(vision: Lane, case: str) -> None:
    make, status, reason = REFUSED[case]
    before = len(vision.chats_forwarded())
    # No clock: a bomb is refused on its declared size before any decode, which its reason shows
    # (image_too_many_pixels); the chat's own timeout bounds a gate that would decode it instead.
    response = vision.chat(*make())
    assert _refusal(response) == (status, reason), response.text
    assert vision.chats_forwarded()[before:] == []
    # llama-server is still there, and still answers an honest image.
    assert vision.chat(data_url(_png(), "image/png")).status_code == 200


def test_an_image_for_the_text_only_model_is_refused(text_only: Lane) -> None:
    assert text_only.stack.gate_health()["vision"] is False
    response = text_only.chat(data_url(_png(), "image/png"))
    assert _refusal(response) == (400, "vision_not_supported"), response.text
    assert text_only.chats_forwarded() == []
