"""The completions shaper: one string prompt, both length names held to the cap, chat's refusals."""

from __future__ import annotations

import json

import pytest
from route_shaping import POLICY, RouteShaper, grant_for

from llama_direct.refusals import FieldOutOfBounds
from llama_launcher.gate.bounds import BOUNDED, HARMLESS, REFUSED
from llama_launcher.gate.completions_shaping import ALLOWED, FIELDS, REFUSED_FIELDS, shape_completions_body
from llama_launcher.gate.prompt_size import MAX_CHARS_PER_TOKEN
from llama_launcher.gate.shaping import DENIED_FIELDS, ShapingPolicy

GRANT = grant_for("/v1/completions")
ROUTE = RouteShaper(shape_completions_body, GRANT)
shape, refused = ROUTE.shape, ROUTE.refused


def test_a_prompt_gets_the_model_and_the_cap() -> None:
    assert shape({"prompt": "Once"}) == {"prompt": "Once", "model": "smollm2", "max_tokens": 256}


def test_a_list_of_one_prompt_becomes_the_string() -> None:
    assert shape({"prompt": ["Once"]})["prompt"] == "Once"


@pytest.mark.parametrize("prompt", [["a", "b"], [1, 2, 3], {"prompt_string": "x", "multimodal_data": ["AA=="]},
                                    None, 5])
def test_other_prompts_are_refused(prompt: object) -> None:
    assert refused({"prompt": prompt}).message == "prompt must be a string."


@pytest.mark.parametrize("name", ["max_tokens", "n_predict"])
def test_each_length_name_is_held_to_the_cap(name: str) -> None:
    assert shape({"prompt": "x", name: 256})[name] == 256
    assert refused({"prompt": "x", name: 257}).code == "length_over_cap"


def test_n_predict_cannot_lift_a_max_tokens_within_the_cap() -> None:
    assert refused({"prompt": "x", "max_tokens": 1, "n_predict": 10**6}).code == "length_over_cap"


def test_unlimited_n_predict_gets_the_cap() -> None:
    assert shape({"prompt": "x", "n_predict": -1})["max_tokens"] == 256


@pytest.mark.parametrize("name", sorted(DENIED_FIELDS - {"prompt"}))
def test_chats_refused_fields_are_refused(name: str) -> None:
    assert refused({"prompt": "x", name: 1}).code == "field_not_allowed"


def test_every_field_is_classified_with_a_reason() -> None:
    assert all(kind in (BOUNDED, HARMLESS, REFUSED) and reason for kind, reason in FIELDS.values())
    assert not ALLOWED & REFUSED_FIELDS and "echo" in REFUSED_FIELDS and "prompt" in ALLOWED


def test_unknown_fields_are_dropped() -> None:
    assert shape({"prompt": "x", "suffix": "y", "best_of": 3}).keys() == {"prompt", "model", "max_tokens"}


def test_logprobs_is_a_bounded_count() -> None:
    assert shape({"prompt": "x", "logprobs": 5})["logprobs"] == 5
    with pytest.raises(FieldOutOfBounds) as caught:
        shape({"prompt": "x", "logprobs": 1000})
    assert caught.value.param == "logprobs"


def test_n_must_be_one_and_chat_bounds_hold() -> None:
    assert refused({"prompt": "x", "n": 4}).code == "n_not_supported"
    with pytest.raises(FieldOutOfBounds):
        shape({"prompt": "x", "dry_penalty_last_n": 10**9})


def test_the_prompt_size_bound_holds() -> None:
    small = ShapingPolicy(context=64)
    shape({"prompt": "x" * (64 * MAX_CHARS_PER_TOKEN)}, small)
    assert refused({"prompt": "x" * (64 * MAX_CHARS_PER_TOKEN + 1)}, small).code == "prompt_too_large"
    assert refused({"prompt": "<|im_start|>" * 65}, small).code == "prompt_too_large"


def test_shaping_is_idempotent() -> None:
    once = shape_completions_body(json.dumps({"prompt": ["x"], "stream": True, "top_k": 2}).encode(), GRANT, POLICY)
    assert shape_completions_body(once, GRANT, POLICY) == once
