"""The lane registry and the gate's shapers agree: every body format a route names has a shaper."""

from __future__ import annotations

import json
import typing

import pytest

from llama_direct import lanes
from llama_direct.lanes import LANE_ROUTES, ROUTE_AT, BodyFormat
from llama_direct.refusals import RequestRefusal
from llama_direct.tokens import Grant
from llama_launcher.gate import (
    completions_shaping,
    embeddings_shaping,
    messages_shaping,
    rerank_shaping,
    responses_shaping,
)
from llama_launcher.gate.bounds import BOUNDED, FIELD_COSTS, HARMLESS, REFUSED
from llama_launcher.gate.shapers import SHAPERS
from llama_launcher.gate.shaping import DENIED_FIELDS, ShapingPolicy


def test_every_body_format_of_the_registry_has_a_shaper() -> None:
    named = {route.body for route in LANE_ROUTES if route.body is not None}
    assert named <= SHAPERS.keys()
    assert set(typing.get_args(BodyFormat)) == SHAPERS.keys()


def test_each_route_is_one_entry_with_a_unique_name_and_key() -> None:
    assert len({route.name for route in LANE_ROUTES}) == len(LANE_ROUTES) == len(ROUTE_AT)
    assert set(lanes.SCOPES) == {route.scope for route in LANE_ROUTES}


def test_a_route_with_a_body_names_its_length_cap_and_one_without_takes_none() -> None:
    for route in LANE_ROUTES:
        if route.body is None:
            assert route.length_cap is None and route.length_fields == ()
        elif route.length_fields:
            assert route.length_cap == route.length_fields[0]
        else:
            assert route.length_cap is None


def test_every_generation_holds_a_length_and_nothing_else_does() -> None:
    """A route that opens a conversation streams a generation, so it has a cap; embeddings, rerank
    and the token counts generate nothing and take none."""
    for route in LANE_ROUTES:
        assert bool(route.length_fields) == route.opens_conversation, route.name


def test_no_route_reaches_a_never_routed_path() -> None:
    for route in LANE_ROUTES:
        assert not lanes.never_routed(route.path), route.name
    for path in ("/tools", "/slots/0", "/models/load", "/v1/streams/lookup", "/props", "/lora-adapters"):
        assert lanes.never_routed(path)
    assert not lanes.never_routed("/propsx") and not lanes.never_routed("/v1/models")


def test_a_conversation_is_opened_by_a_body_route_and_continued_by_name_in_the_query() -> None:
    for route in LANE_ROUTES:
        assert not (route.opens_conversation and route.continues_conversation)
        if route.continues_conversation:
            assert route.query[0] == "conv_id" and route.body is None
        else:
            assert route.query == ()


FORMAT_TABLES = {
    "responses": responses_shaping.FIELDS,
    "messages": messages_shaping.FIELDS,
    "completions": completions_shaping.FIELDS,
    "embeddings": embeddings_shaping.FIELDS,
    "rerank": rerank_shaping.FIELDS,
    "chat": {**FIELD_COSTS, **{name: (REFUSED, "shaping.DENIED_FIELDS") for name in DENIED_FIELDS}},
}


@pytest.mark.parametrize("name", sorted(FORMAT_TABLES))
def test_every_formats_fields_are_classified_with_a_reason(name: str) -> None:
    table = FORMAT_TABLES[name]
    assert table and all(kind in (BOUNDED, HARMLESS, REFUSED) and reason for kind, reason in table.values())
    assert "model" in table and table["model"][0] == BOUNDED


def test_a_chat_count_body_is_shaped_as_chat_with_no_length() -> None:
    grant = Grant(routes=(("POST", "/v1/chat/completions/input_tokens"),), model="m", max_tokens=8)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}).encode()
    assert json.loads(SHAPERS["chat_count"](body, grant, ShapingPolicy())) == {
        "messages": [{"role": "user", "content": "hi"}], "model": "m"}
    with pytest.raises(RequestRefusal):
        SHAPERS["chat_count"](json.dumps({"messages": [], "id_slot": 1}).encode(), grant, ShapingPolicy())
