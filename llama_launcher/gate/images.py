"""One image from a chat message, decoded under hard caps and re-encoded, so llama-server never
decodes a byte the client chose.

llama-server decodes images with stb_image inside the process that holds every user's slots, so
the gate decodes each one first, with Pillow, and forwards only a fresh encoding of its pixels:
a JPEG stays a JPEG (re-encoded at quality 92), anything else Pillow decodes (PNG, WebP, GIF, BMP,
TIFF) becomes a PNG of its first frame. Metadata is not carried over; the EXIF orientation is
applied to the pixels first, so a phone photo still reaches the model upright. Anything else is
refused. Decoding costs CPU, so the caller runs this off the event loop (`connection`).

Only `data:` URLs are accepted: llama-server would fetch an `http(s)` URL itself, from inside the
user's network, or read a `file://` one from disk.

The pixel caps are this module's, per call: one per image (`max_image_pixels`) and one across
the request (`PixelBudget`), both checked on the size in the header before anything is decoded.
`Image.MAX_IMAGE_PIXELS` is a process-wide setting, so it is left alone. Pillow's own bomb guard
still fires, above its global limit, either as `DecompressionBombError` or as a
`DecompressionBombWarning` that a warnings-as-errors filter raises; both become the same refusal.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Protocol

from PIL import Image, ImageOps

from llama_direct.refusals import (
    BAD_IMAGE,
    IMAGE_TOO_LARGE,
    IMAGE_TOO_MANY_PIXELS,
    IMAGES_TOO_MANY_PIXELS,
    REMOTE_IMAGE,
    VISION_NOT_SUPPORTED,
    RequestRefusal,
)


class ImageLimits(Protocol):
    """What image shaping needs of the gate's policy (`shaping.ShapingPolicy` is one)."""

    @property
    def vision(self) -> bool: ...

    @property
    def max_image_bytes(self) -> int: ...

    @property
    def max_image_pixels(self) -> int: ...


class PixelBudget:
    """The pixels one request's images may hold in all; each image takes its share before it is decoded."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, pixels: int, part: str) -> None:
        if pixels > self.left:
            raise RequestRefusal(IMAGES_TOO_MANY_PIXELS, part=part, limit=self.limit)
        self.left -= pixels


OPEN_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP")
JPEG_QUALITY = 92
"""High enough that a photo keeps what a vision model reads in it; JPEG in, JPEG out keeps bodies small."""
PNG_COMPRESS_LEVEL = 1
"""zlib's fastest level: the PNG travels once, over a unix socket, so its size matters less than the time."""
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_DATA_PREFIX = "data:"
_BASE64_MARK = ";base64,"


def shape_image_url(url: str, *, part: str, policy: ImageLimits, budget: PixelBudget) -> str:
    """The `data:` URL to forward for this image, freshly encoded, or a refusal naming `part`."""
    if not policy.vision:
        raise RequestRefusal(VISION_NOT_SUPPORTED)
    data = _decode_data_url(url, part=part, max_bytes=policy.max_image_bytes)
    fmt, encoded = reencode(data, part=part, max_pixels=policy.max_image_pixels, budget=budget)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(encoded).decode('ascii')}"


def _decode_data_url(url: str, *, part: str, max_bytes: int) -> bytes:
    if not url.startswith(_DATA_PREFIX):
        raise RequestRefusal(REMOTE_IMAGE, part=part)
    header, mark, payload = url[len(_DATA_PREFIX) :].partition(_BASE64_MARK)
    if not mark or "," in header:
        raise RequestRefusal(BAD_IMAGE, "not_a_data_url", part=part)
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise RequestRefusal(IMAGE_TOO_LARGE, part=part, limit=max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRefusal(BAD_IMAGE, "base64", part=part) from None
    if len(data) > max_bytes:
        raise RequestRefusal(IMAGE_TOO_LARGE, part=part, limit=max_bytes)
    return data


def reencode(data: bytes, *, part: str, max_pixels: int, budget: PixelBudget) -> tuple[str, bytes]:
    """The image's first frame, encoded afresh: `("JPEG", ...)` for a JPEG, `("PNG", ...)` otherwise.

    The decoders run on untrusted bytes and fail in many ways (OSError, SyntaxError, ValueError,
    struct.error, EOFError, ...), so any exception from them is the one refusal, and its text is
    never shown.
    """
    try:
        with Image.open(io.BytesIO(data), formats=OPEN_FORMATS) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise _too_many_pixels(part, max_pixels)
            budget.take(width * height, part)
            probe.verify()
        with Image.open(io.BytesIO(data), formats=OPEN_FORMATS) as image:
            image.load()
            if image.format == "JPEG":
                return "JPEG", _encode_jpeg(image)
            return "PNG", _encode_png(image)
    except RequestRefusal:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(part, max_pixels) from None
    except Exception:
        raise RequestRefusal(BAD_IMAGE, part=part) from None


def _too_many_pixels(part: str, max_pixels: int) -> RequestRefusal:
    return RequestRefusal(IMAGE_TOO_MANY_PIXELS, part=part, limit=max_pixels)


def _encode_jpeg(image: Image.Image) -> bytes:
    frame = _pixels_only(ImageOps.exif_transpose(image))
    if frame.mode not in ("L", "RGB"):
        frame = frame.convert("RGB")
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _encode_png(image: Image.Image) -> bytes:
    frame = _pixels_only(ImageOps.exif_transpose(image))
    if frame.mode not in _PNG_MODES:
        has_alpha = "A" in frame.getbands() or "transparency" in frame.info
        frame = frame.convert("RGBA" if has_alpha else "RGB")
    out = io.BytesIO()
    frame.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


_KEPT_INFO = frozenset({"transparency"})
"""What of the decoder's `info` describes the pixels themselves, so the new encoding keeps it."""


def _pixels_only(frame: Image.Image) -> Image.Image:
    """`frame` without the source's metadata: Pillow's encoders fall back on `info` for some of it
    (a JPEG's comment, a PNG's ICC profile), which would carry the client's bytes through."""
    frame.info = {key: value for key, value in frame.info.items() if key in _KEPT_INFO}
    return frame
