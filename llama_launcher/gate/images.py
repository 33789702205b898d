"""One image from a chat message, checked and reduced to what llama-server decodes safely.

llama-server decodes images with stb_image inside the process that holds every user's slots, so
the gate decodes each one first, with Pillow and under hard caps, and forwards only PNG or JPEG:
the two formats it passes through byte for byte. Anything Pillow decodes but llama-server may not
(WebP, GIF, BMP, TIFF) becomes a PNG of its first frame; anything else is refused.

Only `data:` URLs are accepted: llama-server would fetch an `http(s)` URL itself, from inside the
user's network, or read a `file://` one from disk.

The pixel cap is this module's, per call: `Image.MAX_IMAGE_PIXELS` is a process-wide setting, so
it is left alone, and the size in the header is checked here before anything is decoded. Pillow's
own bomb guard still fires, above its global limit, either as `DecompressionBombError` or as a
`DecompressionBombWarning` that a warnings-as-errors filter raises; both become the same refusal.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Protocol

from PIL import Image

from llama_direct.refusals import (
    BAD_IMAGE,
    IMAGE_TOO_LARGE,
    IMAGE_TOO_MANY_PIXELS,
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


PASSTHROUGH_FORMATS = frozenset({"PNG", "JPEG"})
CONVERTED_FORMATS = frozenset({"WEBP", "GIF", "BMP", "TIFF"})
_OPEN_FORMATS = sorted(PASSTHROUGH_FORMATS | CONVERTED_FORMATS)
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_DATA_PREFIX = "data:"
_BASE64_MARK = ";base64,"


def shape_image_url(url: str, *, part: str, policy: ImageLimits) -> str:
    """The `data:` URL to forward for this image: PNG or JPEG, or a refusal naming `part`."""
    if not policy.vision:
        raise RequestRefusal(VISION_NOT_SUPPORTED)
    data = _decode_data_url(url, part=part, max_bytes=policy.max_image_bytes)
    fmt, png = _decode_image(data, part=part, max_pixels=policy.max_image_pixels)
    if png is None:
        return _data_url(fmt, data)
    return _data_url("PNG", png)


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


def _decode_image(data: bytes, *, part: str, max_pixels: int) -> tuple[str, bytes | None]:
    """The image's format, and its first frame as PNG when it is not forwarded unchanged.

    The decoders run on untrusted bytes and fail in many ways (OSError, SyntaxError, ValueError,
    struct.error, EOFError, ...), so any exception from them is the one refusal, and its text is
    never shown.
    """
    try:
        with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as probe:
            fmt = probe.format or ""
            width, height = probe.size
            if width * height > max_pixels:
                raise _too_many_pixels(part, max_pixels)
            probe.verify()
        with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as image:
            image.load()
            if fmt in PASSTHROUGH_FORMATS:
                return fmt, None
            return fmt, _first_frame_png(image)
    except RequestRefusal:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(part, max_pixels) from None
    except Exception:
        raise RequestRefusal(BAD_IMAGE, part=part) from None


def _too_many_pixels(part: str, max_pixels: int) -> RequestRefusal:
    return RequestRefusal(IMAGE_TOO_MANY_PIXELS, part=part, limit=max_pixels)


def _first_frame_png(image: Image.Image) -> bytes:
    frame = image
    if frame.mode not in _PNG_MODES:
        has_alpha = "A" in frame.getbands() or "transparency" in frame.info
        frame = frame.convert("RGBA" if has_alpha else "RGB")
    out = io.BytesIO()
    frame.save(out, format="PNG")
    return out.getvalue()


def _data_url(fmt: str, data: bytes) -> str:
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(data).decode('ascii')}"
