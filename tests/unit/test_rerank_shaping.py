"""The rerank shaper: query and documents bounded in count and size, top_n held to the documents."""

from __future__ import annotations

from typing import Any

import pytest
from route_shaping import RouteShaper, grant_for

from llama_launcher.gate.bounds import BOUNDED, HARMLESS
from llama_launcher.gate.prompt_size import MAX_CHARS_PER_TOKEN, MAX_INPUTS
from llama_launcher.gate.rerank_shaping import FIELDS, shape_rerank_body
from llama_launcher.gate.shaping import ShapingPolicy

GRANT = grant_for("/v1/rerank")
ROUTE = RouteShaper(shape_rerank_body, GRANT)
shape, refused = ROUTE.shape, ROUTE.refused


def test_a_query_and_documents_pass_with_the_model() -> None:
    assert shape({"query": "q", "documents": ["a", "b"], "top_n": 1}) == {
        "query": "q", "documents": ["a", "b"], "top_n": 1, "model": "smollm2"}


def test_every_field_is_classified_and_others_are_dropped() -> None:
    assert all(kind in (BOUNDED, HARMLESS) and reason for kind, reason in FIELDS.values())
    assert shape({"query": "q", "documents": ["a"], "texts": ["b"], "return_text": True}).keys() == {
        "query", "documents", "model"}


@pytest.mark.parametrize("top_n", [0, -1, -2**31, 3, "1", True])
def test_top_n_is_held_to_the_documents(top_n: object) -> None:
    assert refused({"query": "q", "documents": ["a", "b"], "top_n": top_n}).code == "bad_input"


@pytest.mark.parametrize("request_", [{"documents": ["a"]}, {"query": 1, "documents": ["a"]},
                                      {"query": "q", "documents": []}, {"query": "q", "documents": "a"},
                                      {"query": "q", "documents": [1]}, {"query": "q"}])
def test_malformed_queries_and_documents_are_refused(request_: dict[str, Any]) -> None:
    assert refused(request_).code == "bad_input"


def test_documents_are_bounded_in_count_and_each_with_the_query_in_size() -> None:
    shape({"query": "q", "documents": ["d"] * MAX_INPUTS})
    assert refused({"query": "q", "documents": ["d"] * (MAX_INPUTS + 1)}).code == "bad_input"
    small = ShapingPolicy(context=64)
    query = "q" * (64 * MAX_CHARS_PER_TOKEN)
    assert refused({"query": query, "documents": ["d"]}, small).code == "prompt_too_large"
