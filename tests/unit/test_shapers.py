"""The lane registry and the gate's shapers agree: every body format a route names has a shaper."""

from __future__ import annotations

import typing

from llama_direct import lanes
from llama_direct.lanes import LANE_ROUTES, ROUTE_AT, BodyFormat
from llama_launcher.gate.shapers import SHAPERS


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
        else:
            assert route.length_cap == route.length_fields[0]


def test_a_conversation_is_opened_by_a_body_route_and_continued_by_name_in_the_query() -> None:
    for route in LANE_ROUTES:
        assert not (route.opens_conversation and route.continues_conversation)
        if route.continues_conversation:
            assert route.query[0] == "conv_id" and route.body is None
        else:
            assert route.query == ()
