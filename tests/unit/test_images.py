import base64
import io
import struct
import tracemalloc
import warnings
import zlib

import pytest
from PIL import Image, PngImagePlugin

from llama_direct.refusals import RequestRefusal
from llama_launcher.gate.images import JPEG_QUALITY, PixelBudget, shape_image_url
from llama_launcher.gate.shaping import ShapingPolicy

VISION = ShapingPolicy(vision=True)
PART = "messages[1].content[2]"
UNDECODABLE = "messages[1].content[2]: the image could not be decoded."


def encode(fmt: str, image: Image.Image | None = None, **options: object) -> bytes:
    image = image if image is not None else Image.new("RGB", (4, 3), (200, 10, 30))
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def payload(url: str) -> bytes:
    prefix, _, b64 = url.partition(",")
    assert prefix.endswith(";base64")
    return base64.b64decode(b64, validate=True)


def shape(url: str, policy: ShapingPolicy = VISION, budget: PixelBudget | None = None) -> str:
    budget = budget if budget is not None else PixelBudget(policy.max_request_pixels)
    return shape_image_url(url, part=PART, policy=policy, budget=budget)


def refused(url: str, policy: ShapingPolicy = VISION, budget: PixelBudget | None = None) -> RequestRefusal:
    with pytest.raises(RequestRefusal) as caught:
        shape(url, policy, budget)
    return caught.value


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but that holds only a few bytes of pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --- every image is encoded afresh ------------------------------------------------------------


def test_png_is_re_encoded_not_forwarded():
    """llama-server's decoder must never see the client's bytes, even for a valid PNG."""
    png = encode("PNG", Image.new("RGB", (4, 3), (200, 10, 30)), compress_level=9)
    url = shape(data_url(png))
    assert url != data_url(png)
    image = decoded(url)
    assert image.size == (4, 3)
    assert image.convert("RGB").getpixel((1, 1)) == (200, 10, 30)


def test_png_metadata_and_trailing_bytes_are_dropped():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "attacker-chosen text")
    png = encode("PNG", pnginfo=info) + b"trailing attacker bytes"
    forwarded = payload(shape(data_url(png)))
    assert b"attacker" not in forwarded


def test_jpeg_is_re_encoded_as_jpeg():
    jpeg = encode("JPEG", Image.new("RGB", (16, 16), (10, 200, 30)), quality=50) + b"trailing attacker bytes"
    url = shape(data_url(jpeg, "image/jpeg"))
    assert url.startswith("data:image/jpeg;base64,")
    forwarded = payload(url)
    assert forwarded != jpeg and b"attacker" not in forwarded
    image = Image.open(io.BytesIO(forwarded))
    assert (image.format, image.size) == ("JPEG", (16, 16))
    assert JPEG_QUALITY > 50


def test_a_jpeg_comment_is_dropped():
    """Pillow's JPEG encoder writes `info["comment"]` back unless told otherwise (found on the real
    vision path, issue 25): the client's comment bytes must not reach llama-server."""
    jpeg = encode("JPEG", comment=b"attacker-chosen comment")
    for orientation in (None, 6):
        source = jpeg
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            source = encode("JPEG", exif=exif.tobytes(), comment=b"attacker-chosen comment")
        forwarded = payload(shape(data_url(source, "image/jpeg")))
        assert b"attacker" not in forwarded
        assert "comment" not in Image.open(io.BytesIO(forwarded)).info


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("WEBP", "image/webp"), ("TIFF", "image/tiff")])
def test_an_icc_profile_is_dropped(fmt, mime):
    """The PNG encoder writes `info["icc_profile"]` back unless told otherwise: an ICC profile is the
    client's bytes (stb_image ignores it anyway), so none is carried over."""
    source = encode(fmt, icc_profile=b"attacker-chosen profile " * 8)
    assert Image.open(io.BytesIO(source)).info.get("icc_profile")
    forwarded = payload(shape(data_url(source, mime)))
    assert b"attacker" not in forwarded
    assert Image.open(io.BytesIO(forwarded)).info.get("icc_profile") is None


def test_palette_transparency_survives_the_metadata_drop():
    source = Image.new("P", (4, 4), 1)
    source.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image = decoded(shape(data_url(encode("PNG", source, transparency=1))))
    assert image.convert("RGBA").getpixel((0, 0))[3] == 0


def test_jpeg_exif_orientation_is_applied_to_the_pixels():
    source = Image.new("RGB", (8, 4), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpeg = encode("JPEG", source, exif=exif.tobytes())
    image = Image.open(io.BytesIO(payload(shape(data_url(jpeg, "image/jpeg")))))
    assert image.size == (4, 8)
    assert image.getexif().get(0x0112) is None


def test_the_declared_type_is_replaced_by_the_decoded_one():
    png = encode("PNG")
    assert shape(data_url(png, "image/jpeg")).startswith("data:image/png;base64,")


# --- conversion -------------------------------------------------------------------------------


def decoded(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(payload(url)))
    assert image.format == "PNG"
    image.load()
    return image


def test_webp_becomes_png():
    source = Image.new("RGB", (5, 4), (12, 200, 99))
    image = decoded(
        shape(data_url(encode("WEBP", source, lossless=True), "image/webp"), VISION)
    )
    assert image.size == (5, 4)
    assert image.convert("RGB").getpixel((2, 2)) == (12, 200, 99)


def test_gif_becomes_png_of_its_first_frame():
    frames = [Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))]
    gif = encode("GIF", frames[0], save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = decoded(shape(data_url(gif, "image/gif"), VISION))
    assert image.size == (6, 6)
    assert image.convert("RGB").getpixel((3, 3)) == (255, 0, 0)


def test_bmp_becomes_png():
    source = Image.new("RGB", (3, 2), (1, 2, 3))
    image = decoded(shape(data_url(encode("BMP", source), "image/bmp"), VISION))
    assert image.convert("RGB").getpixel((0, 0)) == (1, 2, 3)


def test_cmyk_tiff_becomes_rgb_png():
    source = Image.new("CMYK", (3, 2), (0, 255, 255, 0))
    image = decoded(shape(data_url(encode("TIFF", source), "image/tiff"), VISION))
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == (255, 0, 0)


def test_webp_with_alpha_keeps_it():
    source = Image.new("RGBA", (4, 4), (10, 20, 30, 40))
    image = decoded(shape(data_url(encode("WEBP", source, lossless=True)), VISION))
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0)) == (10, 20, 30, 40)


# --- refusals ---------------------------------------------------------------------------------


def test_truncated_png_is_refused():
    png = encode("PNG", Image.effect_noise((64, 64), 50).convert("RGB"))
    refusal = refused(data_url(png[: len(png) // 2]))
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_image", UNDECODABLE)


def test_truncated_jpeg_is_refused():
    jpeg = encode("JPEG", Image.effect_noise((64, 64), 50).convert("RGB"))
    refusal = refused(data_url(jpeg[: len(jpeg) // 2], "image/jpeg"))
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_image", UNDECODABLE)


def test_png_with_a_corrupted_chunk_is_refused():
    png = bytearray(encode("PNG", Image.effect_noise((32, 32), 50).convert("RGB")))
    png[60] ^= 0xFF
    refusal = refused(data_url(bytes(png)))
    assert (refusal.status, refusal.code) == (400, "bad_image")


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        b"hello, this is text",
        b"",
        b"\x89PNG\r\n\x1a\n",
    ],
)
def test_undecodable_data_is_refused(data):
    refusal = refused(data_url(data, "image/svg+xml"))
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_image", UNDECODABLE)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_formats_outside_the_list_are_refused(fmt):
    refusal = refused(data_url(encode(fmt)))
    assert (refusal.status, refusal.code) == (400, "bad_image")


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "http://127.0.0.1:8080/props",
        "file:///etc/passwd",
        "DATA:image/png;base64,AAAA",
        "/cat.png",
    ],
)
def test_only_data_urls_are_accepted(url):
    refusal = refused(url)
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "remote_image",
        "messages[1].content[2]: only data: image URLs are accepted.",
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/png,rawbytes", "the image must be a base64 data: URL."),
        ("data:image/png;x=,y;base64,AAAA", "the image must be a base64 data: URL."),
        ("data:image/png;base64,AA*A", "the image is not valid base64."),
        ("data:image/png;base64,AAA", "the image is not valid base64."),
        ("data:image/png;base64,AA\nAA", "the image is not valid base64."),
        ("data:image/png;base64,AA-_", "the image is not valid base64."),
    ],
)
def test_malformed_data_urls_are_refused(url, message):
    refusal = refused(url)
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_image", f"{PART}: {message}")


def test_images_over_the_byte_cap_are_413():
    png = encode("PNG", Image.effect_noise((64, 64), 50).convert("RGB"))
    policy = ShapingPolicy(vision=True, max_image_bytes=len(png) - 1)
    refusal = refused(data_url(png), policy)
    assert (refusal.status, refusal.code, refusal.message) == (
        413,
        "image_too_large",
        f"{PART}: the image is larger than {len(png) - 1} bytes.",
    )
    assert shape(data_url(png), ShapingPolicy(vision=True, max_image_bytes=len(png)))


def test_a_huge_payload_is_refused_before_decoding():
    policy = ShapingPolicy(vision=True, max_image_bytes=1000)
    refusal = refused("data:image/png;base64," + "A" * 4000, policy)
    assert (refusal.status, refusal.code) == (413, "image_too_large")


def test_a_model_without_vision_refuses_images():
    refusal = refused(data_url(encode("PNG")), ShapingPolicy(vision=False))
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "vision_not_supported",
        "This model does not accept images.",
    )


# --- pixels and decompression bombs -----------------------------------------------------------


def test_pixel_cap_is_per_call():
    image = encode("PNG", Image.new("L", (11, 10)))
    refusal = refused(data_url(image), ShapingPolicy(vision=True, max_image_pixels=100))
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "image_too_many_pixels",
        f"{PART}: the image has more than 100 pixels.",
    )
    assert shape(data_url(image), ShapingPolicy(vision=True, max_image_pixels=110))


def _pixels_refused_peak(image: bytes) -> int:
    """The image refused for its pixels; the most memory its refusal took, in bytes."""
    tracemalloc.start()
    try:
        refusal = refused(data_url(image))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (refusal.status, refusal.code) == (400, "image_too_many_pixels")
    return peak


@pytest.mark.parametrize("size", [(20_000, 20_000), (10_000, 10_000), (8_000, 6_000), (40_001, 1_000)])
def test_declared_bombs_are_refused_without_allocating(size):
    bomb = png_with_size(*size)
    assert len(bomb) < 200
    global_cap = Image.MAX_IMAGE_PIXELS
    filters = list(warnings.filters)
    assert _pixels_refused_peak(bomb) < 1_000_000
    assert global_cap == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters


def test_a_real_bomb_is_refused_before_its_pixels_are_decoded():
    bomb = encode("PNG", Image.new("1", (8_000, 6_000)))
    assert len(bomb) < 100_000
    assert _pixels_refused_peak(bomb) < 2_000_000


def test_the_request_pixel_budget_is_shared_by_its_images():
    image = data_url(encode("PNG", Image.new("L", (10, 10))))
    budget = PixelBudget(250)
    shape(image, budget=budget)
    shape(image, budget=budget)
    refusal = refused(image, budget=budget)
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "images_too_many_pixels",
        f"{PART}: the request's images hold more than 250 pixels in all.",
    )


def test_the_budget_is_taken_before_decoding():
    """The declared size is charged first: a bomb past the budget costs no decode at all."""
    bomb = png_with_size(5_000, 5_000)
    tracemalloc.start()
    try:
        refusal = refused(data_url(bomb), budget=PixelBudget(1_000_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refusal.code == "images_too_many_pixels"
    assert peak < 1_000_000
