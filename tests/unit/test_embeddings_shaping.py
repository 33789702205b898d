"""The embeddings shaper: inputs bounded in count and size, the native `content` refused."""

from __future__ import annotations

import pytest
from route_shaping import RouteShaper, grant_for

from llama_direct.refusals import FieldOutOfBounds
from llama_launcher.gate.bounds import BOUNDED, REFUSED
from llama_launcher.gate.embeddings_shaping import FIELDS, shape_embeddings_body
from llama_launcher.gate.prompt_size import INPUT_CONTEXTS, MAX_CHARS_PER_TOKEN, MAX_INPUTS
from llama_launcher.gate.shaping import ShapingPolicy

GRANT = grant_for("/v1/embeddings")
ROUTE = RouteShaper(shape_embeddings_body, GRANT)
shape, refused = ROUTE.shape, ROUTE.refused


def test_a_string_or_a_list_of_strings_passes_with_the_model_and_no_length() -> None:
    assert shape({"input": "hi"}) == {"input": "hi", "model": "smollm2"}
    assert shape({"input": ["a", "b"], "encoding_format": "base64"}) == {
        "input": ["a", "b"], "encoding_format": "base64", "model": "smollm2"}


def test_every_field_is_classified_and_others_are_dropped() -> None:
    assert all(kind in (BOUNDED, REFUSED) and reason for kind, reason in FIELDS.values())
    assert shape({"input": "x", "dimensions": 8, "user": "u", "embd_normalize": 9}).keys() == {"input", "model"}


def test_the_native_content_is_refused() -> None:
    assert refused({"content": [{"prompt_string": "x", "multimodal_data": ["AA=="]}]}).code == "field_not_allowed"


@pytest.mark.parametrize("value", [[], [1, 2, 3], [[1, 2]], ["a", 1], {"content": "x"}, None])
def test_other_inputs_are_refused(value: object) -> None:
    assert refused({"input": value}).code == "bad_input"


def test_the_count_of_inputs_is_bounded() -> None:
    shape({"input": ["x"] * MAX_INPUTS})
    assert refused({"input": ["x"] * (MAX_INPUTS + 1)}).code == "bad_input"


def test_each_input_must_fit_a_slot_and_all_of_them_a_few() -> None:
    small = ShapingPolicy(context=64)
    full = "x" * (64 * MAX_CHARS_PER_TOKEN)
    shape({"input": [full] * INPUT_CONTEXTS}, small)
    assert refused({"input": [full + "x"]}, small).code == "prompt_too_large"
    assert refused({"input": [full] * (INPUT_CONTEXTS + 1)}, small).code == "inputs_too_large"
    assert refused({"input": ["<|im_end|>" * 65]}, small).code == "prompt_too_large"


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(FieldOutOfBounds) as caught:
        shape({"input": "x", "encoding_format": "int8"})
    assert caught.value.param == "encoding_format"


def test_another_model_is_refused() -> None:
    assert refused({"input": "x", "model": "text-embedding-3-small"}).status == 403
