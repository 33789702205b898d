import base64
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from route_shaping import HI, VISION, RouteShaper, grant_for, png_url

from llama_direct.refusals import (
    RequestRefusal,
)
from llama_launcher.gate.images import PixelBudget, shape_image_url
from llama_launcher.gate.shaping import (
    ALLOWED_FIELDS,
    DENIED_FIELDS,
    LENGTH_FIELDS,
    ShapingPolicy,
    shape_chat_body,
)

GRANT = grant_for("/v1/chat/completions")
ROUTE = RouteShaper(shape_chat_body, GRANT)
shape_bytes, shape, refused = ROUTE.shape_bytes, ROUTE.shape, ROUTE.refused

# --- the output -------------------------------------------------------------------------------


def test_minimal_body_gets_the_model_and_the_cap_in_compact_json():
    body = b'{ "messages": [ {"role": "user", "content": "hi"} ] }'
    assert shape_bytes(body) == b'{"messages":[{"role":"user","content":"hi"}],"model":"smollm2","max_tokens":256}'


def test_non_ascii_text_stays_utf8():
    out = shape_bytes(json.dumps({"messages": [{"role": "user", "content": "héllo ☃"}]}).encode())
    assert "héllo ☃".encode() in out


def test_allowed_fields_pass_unchanged():
    request = {
        "messages": HI,
        "model": "smollm2",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 100,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "typical_p": 1.0,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "repeat_penalty": 1.1,
        "repeat_last_n": 64,
        "seed": 42,
        "stop": ["\n\n"],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 5,
        "return_progress": True,
        "timings_per_token": True,
        "cache_prompt": False,
        "chat_template_kwargs": {"enable_thinking": False},
        "reasoning_format": "deepseek",
        "reasoning_effort": "low",
        "n": 1,
        "user": "u1",
        "dry_multiplier": 0.8,
        "xtc_probability": 0.5,
        "mirostat": 2,
    }
    assert shape(request) == request


@pytest.mark.parametrize("name", ["foo", "metadata", "store", "__metadata_user_id", "service_tier"])
def test_unknown_fields_are_dropped(name):
    assert shape({"messages": HI, name: 1}) == {"messages": HI, "model": "smollm2", "max_tokens": 256}


@pytest.mark.parametrize("name", sorted(DENIED_FIELDS))
def test_denied_fields_are_refused_by_name(name):
    refusal = refused({"messages": HI, name: 0})
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "field_not_allowed",
        f"The field '{name}' is not allowed on the direct lane.",
    )


def test_the_lists_do_not_overlap_and_name_the_known_dangers():
    assert not ALLOWED_FIELDS & DENIED_FIELDS
    assert {"id_slot", "slot_id", "lora", "n_cmpl", "n_keep", "n_discard", "t_max_predict_ms"} <= DENIED_FIELDS
    assert {"samplers", "post_sampling_probs", "n_probs", "grammar_lazy", "t_max_prompt_ms"} <= DENIED_FIELDS


# --- model ------------------------------------------------------------------------------------


def test_same_model_passes():
    assert shape({"model": "smollm2", "messages": HI})["model"] == "smollm2"


def test_null_model_gets_the_grants():
    assert shape({"model": None, "messages": HI})["model"] == "smollm2"


@pytest.mark.parametrize("model", ["other", "SmolLM2", "/models/smollm2.gguf", 7])
def test_another_model_is_403(model):
    refusal = refused({"model": model, "messages": HI})
    assert (refusal.status, refusal.code, refusal.message) == (
        403,
        "model_mismatch",
        "The model is not the one the token was issued for.",
    )


# --- length -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LENGTH_FIELDS)
def test_each_length_field_at_the_cap_passes(name):
    out = shape({"messages": HI, name: 256})
    assert out[name] == 256
    assert [field for field in LENGTH_FIELDS if field in out] == [name]


@pytest.mark.parametrize("name", LENGTH_FIELDS)
def test_each_length_field_over_the_cap_is_400(name):
    refusal = refused({"messages": HI, name: 257})
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "length_over_cap",
        f"{name} may be at most 256 on this token.",
    )


def test_a_second_length_field_over_the_cap_is_refused():
    refusal = refused({"messages": HI, "max_tokens": 10, "n_predict": 100_000})
    assert (refusal.code, refusal.message) == ("length_over_cap", "n_predict may be at most 256 on this token.")


@pytest.mark.parametrize("name", LENGTH_FIELDS)
@pytest.mark.parametrize("value", [0, -2, "100", 10.0, True, [5], 2**70 * -1])
def test_length_fields_must_be_positive_integers(name, value):
    refusal = refused({"messages": HI, name: value})
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "bad_length",
        f"{name} must be an integer from 1 to 256.",
    )


def test_max_tokens_minus_one_is_refused():
    assert refused({"messages": HI, "max_tokens": -1}).code == "bad_length"


def test_unlimited_n_predict_is_replaced_by_the_cap():
    assert shape({"messages": HI, "n_predict": -1}) == {"messages": HI, "model": "smollm2", "max_tokens": 256}


@pytest.mark.parametrize("name", LENGTH_FIELDS)
def test_null_length_counts_as_absent(name):
    assert shape({"messages": HI, name: None}) == {"messages": HI, "model": "smollm2", "max_tokens": 256}


def test_several_length_fields_within_the_cap_are_kept():
    out = shape({"messages": HI, "max_tokens": 10, "max_completion_tokens": 20, "n_predict": 30})
    assert (out["max_tokens"], out["max_completion_tokens"], out["n_predict"]) == (10, 20, 30)


def test_no_cap_is_added_beside_a_present_length_field():
    assert "max_tokens" not in shape({"messages": HI, "n_predict": 5})


# --- repetition penalty, n, logprobs ----------------------------------------------------------


def test_repetition_penalty_becomes_repeat_penalty():
    out = shape({"messages": HI, "repetition_penalty": 1.2})
    assert out == {"messages": HI, "repeat_penalty": 1.2, "model": "smollm2", "max_tokens": 256}


def test_equal_repetition_and_repeat_penalty_merge():
    out = shape({"repeat_penalty": 1.2, "messages": HI, "repetition_penalty": 1.2})
    assert list(out) == ["repeat_penalty", "messages", "model", "max_tokens"]


def test_different_repetition_and_repeat_penalty_are_400():
    refusal = refused({"messages": HI, "repeat_penalty": 1.1, "repetition_penalty": 1.2})
    assert (refusal.status, refusal.code) == (400, "conflicting_fields")


def test_repeat_penalty_is_never_defaulted():
    assert "repeat_penalty" not in shape({"messages": HI})


def test_n_of_one_passes():
    assert shape({"messages": HI, "n": 1})["n"] == 1


def test_null_n_is_dropped_as_absent_like_a_null_length():
    assert "n" not in shape({"messages": HI, "n": None})


@pytest.mark.parametrize("n", [2, 0, "1", True, 1.0])
def test_other_n_is_400(n):
    refusal = refused({"messages": HI, "n": n})
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "n_not_supported",
        "The direct lane generates one choice: n must be 1.",
    )


@pytest.mark.parametrize("value", [100_000, 1, "true"])
def test_non_boolean_logprobs_is_400(value):
    refusal = refused({"messages": HI, "logprobs": value})
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_field", "logprobs must be true or false.")


@pytest.mark.parametrize("value", [21, -1, 5.0, "5"])
def test_top_logprobs_is_capped(value):
    refusal = refused({"messages": HI, "logprobs": True, "top_logprobs": value})
    assert (refusal.status, refusal.code) == (400, "top_logprobs_over_cap")


# --- messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({}, "messages must be a non-empty list."),
        ({"messages": []}, "messages must be a non-empty list."),
        ({"messages": "hi"}, "messages must be a non-empty list."),
        ({"messages": {"role": "user"}}, "messages must be a non-empty list."),
        ({"messages": [1]}, "messages[0] must be an object with a string role."),
        ({"messages": [{"content": "x"}]}, "messages[0] must be an object with a string role."),
        ({"messages": [*HI, {"role": 1, "content": "x"}]}, "messages[1] must be an object with a string role."),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string or a list of parts."),
    ],
)
def test_malformed_messages_are_400(request_, message):
    refusal = refused(request_)
    assert (refusal.status, refusal.code, refusal.message) == (400, "bad_messages", message)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}},
        {"type": "file"},
        {"text": "no type"},
        "bare string",
    ],
)
def test_parts_other_than_text_and_image_are_400(part):
    refusal = refused({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, part]}]})
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "bad_content_part",
        "messages[0].content[1]: only text and image_url parts are accepted.",
    )


def test_text_parts_and_tool_messages_pass():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t", "type": "function"}]},
        {"role": "tool", "tool_call_id": "t", "content": "42"},
    ]
    assert shape({"messages": messages})["messages"] == messages


# --- JSON limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"messages": [}',
        b"\xff\xfe{}",
        '{"messages": "h\u00e9"}'.encode("latin-1"),
        b'{"messages": [], "temperature": NaN}',
        b'{"messages": [], "temperature": Infinity}',
        b'{"messages": [], "temperature": 1e400}',
        b'{"max_tokens": 1, "max_tokens": 100000, "messages": []}',
    ],
)
def test_invalid_json_is_400(body):
    refusal = refused(body)
    assert (refusal.status, refusal.code, refusal.message) == (400, "invalid_json", "The body is not valid UTF-8 JSON.")


def test_lone_surrogate_is_400():
    refusal = refused(b'{"messages": [{"role": "user", "content": "\\ud800"}]}')
    assert (refusal.status, refusal.code) == (400, "invalid_json")


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"1", b"null"])
def test_non_object_is_400(body):
    refusal = refused(body)
    assert (refusal.status, refusal.code, refusal.message) == (400, "not_an_object", "The body must be a JSON object.")


def nested(depth: int) -> bytes:
    """A body `depth` levels deep, counting the top-level object as one."""
    return b'{"messages":[{"role":"user","content":"hi"}],"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_depth_at_the_limit_passes():
    assert shape_bytes(nested(64)).startswith(b'{"messages"')


@pytest.mark.parametrize("depth", [65, 900, 200_000])
def test_too_deep_is_400_without_a_recursion_error(depth):
    refusal = refused(nested(depth))
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "json_too_deep",
        "The body nests deeper than 64 levels.",
    )


def test_body_over_the_cap_is_413():
    body = json.dumps({"messages": HI}).encode()
    refusal = refused(body, ShapingPolicy(max_body_bytes=len(body) - 1))
    assert (refusal.status, refusal.code) == (413, "body_too_large")
    assert shape_bytes(body, ShapingPolicy(max_body_bytes=len(body)))


# --- images -----------------------------------------------------------------------------------


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def reencoded(url: str) -> str:
    """What the gate forwards for `url`: its pixels encoded afresh (deterministic for one Pillow)."""
    return shape_image_url(url, part="p", policy=VISION, budget=PixelBudget(VISION.max_request_pixels))


def test_image_parts_are_shaped_and_rebuilt():
    url = png_url()
    part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}, "extra": 1}
    out = shape({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, part]}]}, VISION)
    text, image = out["messages"][0]["content"]
    assert text == {"type": "text", "text": "a"}
    assert image.keys() == {"type", "image_url"} and image["image_url"].keys() == {"url"}
    forwarded = image["image_url"]["url"]
    assert forwarded.startswith("data:image/png;base64,") and forwarded != url
    decoded = Image.open(io.BytesIO(base64.b64decode(forwarded.partition(",")[2])))
    assert decoded.size == (2, 2) and decoded.convert("RGB").getpixel((1, 1)) == (9, 9, 9)


def test_the_pixel_budget_spans_every_image_of_the_request():
    parts = [image_part(png_url((10, 10))), image_part(png_url((10, 10)))]
    policy = ShapingPolicy(vision=True, max_request_pixels=150)
    refusal = refused({"messages": [{"role": "user", "content": parts}]}, policy)
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "images_too_many_pixels",
        "messages[0].content[1]: the request's images hold more than 150 pixels in all.",
    )
    assert shape({"messages": [{"role": "user", "content": parts[:1]}]}, policy)


def test_images_without_vision_are_400():
    refusal = refused({"messages": [{"role": "user", "content": [image_part(png_url())]}]})
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "vision_not_supported",
        "This model does not accept images.",
    )


def test_image_refusals_name_the_part():
    messages = [
        *HI,
        {"role": "user", "content": [{"type": "text", "text": "a"}, image_part("https://x.example/a.png")]},
    ]
    refusal = refused({"messages": messages}, VISION)
    assert refusal.message == "messages[1].content[1]: only data: image URLs are accepted."


def test_image_url_must_be_a_string():
    refusal = refused({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, VISION)
    assert (refusal.code, refusal.message) == ("bad_image", "messages[0].content[0]: the image URL must be a string.")


def test_too_many_images_are_400():
    parts = [image_part(png_url())] * 3
    refusal = refused({"messages": [{"role": "user", "content": parts}]}, ShapingPolicy(vision=True, max_images=2))
    assert (refusal.status, refusal.code, refusal.message) == (
        400,
        "too_many_images",
        "A request may hold at most 2 images.",
    )


def test_legacy_image_base64_joins_the_last_user_message():
    url = png_url()
    raw = url.partition(",")[2]
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, *HI]
    out = shape({"messages": messages, "image_base64": raw}, VISION)
    assert "image_base64" not in out
    assert out["messages"][:2] == messages[:2]
    expected = [{"type": "text", "text": "hi"}, image_part(reencoded(url))]
    assert out["messages"][2] == {"role": "user", "content": expected}


def test_legacy_image_base64_extends_a_list_of_parts():
    url = png_url()
    out = shape(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}], "image_base64": url}, VISION
    )
    assert out["messages"][0]["content"] == [{"type": "text", "text": "a"}, image_part(reencoded(url))]


def test_legacy_image_base64_needs_a_user_message():
    refusal = refused({"messages": [{"role": "system", "content": "s"}], "image_base64": png_url()}, VISION)
    assert (refusal.status, refusal.code) == (400, "bad_messages")


def test_legacy_image_base64_is_refused_without_vision():
    refusal = refused({"messages": HI, "image_base64": png_url()})
    assert refusal.code == "vision_not_supported"


def test_legacy_image_base64_that_is_not_an_image_names_itself():
    refusal = refused({"messages": HI, "image_base64": base64.b64encode(b"<svg/>").decode()}, VISION)
    assert refusal.message == "image_base64: the image could not be decoded."


# --- properties -------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
NAMES = st.sampled_from(
    sorted(ALLOWED_FIELDS | DENIED_FIELDS | {"repetition_penalty", "image_base64", "n_predict"})
) | st.text(max_size=8)
LENGTHS = st.none() | st.integers(-3, 300)
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": st.text(max_size=10)}),
    min_size=1,
    max_size=3,
)


@st.composite
def requests(draw: st.DrawFn) -> dict:
    request = draw(st.dictionaries(NAMES, VALUES, max_size=6))
    for name in LENGTH_FIELDS:
        if draw(st.booleans()):
            request[name] = draw(LENGTHS)
    if draw(st.integers(0, 9)):
        request["messages"] = draw(MESSAGES)
    if draw(st.booleans()):
        request["model"] = draw(st.sampled_from(["smollm2", None]))
    return request


@given(requests())
def test_shaping_never_forwards_an_unlisted_field_or_a_length_over_the_cap(request):
    try:
        out = json.loads(shape_bytes(json.dumps(request).encode()))
    except RequestRefusal as refusal:
        assert refusal.status in (400, 403, 413)
        return
    assert set(out) <= ALLOWED_FIELDS
    lengths = [out[name] for name in LENGTH_FIELDS if name in out]
    assert lengths
    assert all(type(value) is int and 1 <= value <= GRANT.max_tokens for value in lengths)
    assert out["model"] == GRANT.model


@given(requests())
def test_shaping_is_idempotent(request):
    try:
        once = shape_bytes(json.dumps(request).encode())
    except RequestRefusal:
        return
    assert shape_bytes(once) == once
