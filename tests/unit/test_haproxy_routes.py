"""HAProxy in the gate's place serves the lane routes it can check, from the registry, and refuses to
render a config for one it cannot (`LaneRoute.unproxied`); the body rules it renders mean what they say
(checked against Debian's haproxy in tests/hostile/test_hostile_haproxy_routes.py)."""

from __future__ import annotations

import re

import pytest

from llama_direct.lanes import LANE_PREFIX, LANE_ROUTES, ROUTES
from llama_launcher.haproxy_body import FORMAT_RULES, REFUSED_FIELDS
from llama_launcher.haproxy_config import HaproxyPlan, render
from llama_launcher.haproxy_grant import checked_routes, integer_keys


def _gate(*routes: str) -> HaproxyPlan:
    """HAProxy in the gate's place, serving `routes` (none named: its default)."""
    return HaproxyPlan(bind="127.0.0.1:8443", upstreams=("127.0.0.1:9001",), public_keys=("/k.pem",),
                       audience="fleet", issuers=("broker-a",), routes=routes)


def _served(config: str) -> set[str]:
    """The lane paths the config lets past its first check."""
    match = re.search(r"deny_status 404 unless \{ path ([^}]*) \}", config)
    assert match is not None
    return {path.removeprefix(LANE_PREFIX) for path in match.group(1).split()}


def test_each_route_is_checked_by_haproxy_or_says_why_not() -> None:
    for route in LANE_ROUTES:
        if route.unproxied:
            assert route.name not in {r.name for r in checked_routes()}
        else:
            assert route.body is not None and route.body in FORMAT_RULES, route.name


def test_by_default_every_route_haproxy_can_check_is_served_and_no_other() -> None:
    served = _served(render(_gate()))
    assert served == {route.path for route in LANE_ROUTES if not route.unproxied}
    assert {"/v1/responses", "/v1/messages", "/v1/completions", "/v1/embeddings", "/v1/rerank"} <= served
    assert "/v1/stream" not in served


def test_only_the_named_routes_are_served() -> None:
    config = render(_gate("chat", "messages"))
    assert _served(config) == {"/v1/chat/completions", "/v1/messages"}
    assert "/v1/responses" not in config


@pytest.mark.parametrize("name", [route.name for route in LANE_ROUTES if route.unproxied])
def test_a_route_haproxy_cannot_check_is_refused_at_render_time_with_its_reason(name: str) -> None:
    with pytest.raises(ValueError, match=f"HAProxy cannot check the '{name}' route") as refused:
        render(_gate("chat", name))
    assert ROUTES[name].unproxied in str(refused.value)


@pytest.mark.parametrize("plan", [
    _gate("chats"),
    HaproxyPlan(bind="127.0.0.1:1", gates=("127.0.0.1:2",), routes=("chat",)),
])
def test_an_unknown_route_or_routes_at_the_edge_are_refused(plan: HaproxyPlan) -> None:
    with pytest.raises(ValueError):
        render(plan)


def test_every_length_field_and_budget_is_read_as_a_plain_integer_literal() -> None:
    config = render(_gate())
    keys = integer_keys(checked_routes())
    assert {"max_tokens", "max_output_tokens", "n_predict", "budget_tokens"} <= set(keys)
    assert f'"({"|".join(keys)})"\\s*:\\s*([^\\s1-9]|[0-9]+\\s*[^\\s0-9,}}])' in config
    assert "json_query('$.thinking.budget_tokens','int')" in config


def test_a_route_without_a_length_requires_none_and_a_generating_one_requires_its_own() -> None:
    config = render(_gate())
    for route in checked_routes():
        required = f"{{ path {LANE_PREFIX}{route.path} }} !{{ req.body,json_query('$.{route.length_cap}'"
        assert (required in config) == bool(route.length_cap), route.name
    assert "$.None" not in config


def test_media_by_url_and_the_formats_own_refusals_are_rendered() -> None:
    config = render(_gate())
    assert '"(url|image_url|data)"\\s*:\\s*"(http|file:)' in config
    assert f"{{ path {LANE_PREFIX}/v1/rerank }} {{ req.body -m reg '\"top_n\"\\s*:' }}" in config
    assert f"{{ path {LANE_PREFIX}/v1/completions }} !{{ req.body,json_query('$.prompt') -m found }}" in config


def test_the_gates_refused_fields_are_refused_as_top_level_scalars_on_their_routes() -> None:
    config = render(_gate())
    lines = {line for line in config.splitlines() if "json_query('$." in line and "-m found" in line}
    for route in checked_routes():
        assert route.body is not None
        for name in REFUSED_FIELDS[route.body]:
            assert any(f"json_query('$.{name}')" in line and (f"{LANE_PREFIX}{route.path} " in line + " "
                                                               or "{ path" not in line) for line in lines), name
    prompt = next(line for line in lines if "json_query('$.prompt') -m found }" in line and "!{" not in line)
    assert f"{LANE_PREFIX}/v1/completions " not in prompt + " "
