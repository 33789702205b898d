"""What one chat request may cost llama-server (gate/bounds.py): every forwarded field classified, and
the bounds on the fields that size its work (penalty windows, stop strings, breakers, template
kwargs, schemas)."""

import json

import pytest
from route_shaping import HI, POLICY, RouteShaper, grant_for

from llama_direct.refusals import (
    FIELD_OUT_OF_BOUNDS,
    TEMPLATE_KWARG_NOT_ALLOWED,
    FieldOutOfBounds,
)
from llama_launcher.gate.bounds import (
    BOUNDED,
    FALLBACK_CONTEXT,
    FIELD_COSTS,
    HARMLESS,
    MAX_BREAKERS,
    MAX_SCHEMA_BYTES,
    MAX_STOP_BYTES,
    MAX_STOP_STRINGS,
    MAX_TOOLS,
)
from llama_launcher.gate.shaping import (
    ALLOWED_FIELDS,
    ShapingPolicy,
    shape_chat_body,
)

GRANT = grant_for("/v1/chat/completions")
ROUTE = RouteShaper(shape_chat_body, GRANT)
shape_bytes, shape, refused = ROUTE.shape_bytes, ROUTE.shape, ROUTE.refused

# --- what one request may cost llama-server (bounds.py) -----------------------------------------


def out_of_bounds(request: dict, policy: ShapingPolicy = POLICY) -> dict:
    """The refusal's whole error body, which must be the fixed one with the field in `param`."""
    refusal = refused({"messages": HI, **request}, policy)
    assert isinstance(refusal, FieldOutOfBounds)
    assert refusal.status == 400
    return json.loads(refusal.to_body())["error"]


def test_every_forwarded_field_is_classified_with_a_reason():
    assert set(FIELD_COSTS) == ALLOWED_FIELDS
    assert all(kind in (BOUNDED, HARMLESS) and reason for kind, reason in FIELD_COSTS.values())


@pytest.mark.parametrize("name", ["repeat_last_n", "dry_penalty_last_n"])
@pytest.mark.parametrize("value", [-1, 0, 64, 2048])
def test_last_n_within_the_slot_context_passes(name, value):
    request = {"messages": HI, name: value}
    assert shape(request, ShapingPolicy(context=2048))[name] == value


@pytest.mark.parametrize("name", ["repeat_last_n", "dry_penalty_last_n"])
@pytest.mark.parametrize("value", [2049, 1_000_000_000, 2**31 - 1, -2, 64.5, "64", True, [64]])
def test_last_n_beyond_the_slot_context_is_refused_naming_the_field(name, value):
    error = out_of_bounds({name: value}, ShapingPolicy(context=2048))
    assert error == {"message": FIELD_OUT_OF_BOUNDS.message, "type": "invalid_request_error", "code": 400,
                     "reason": "field_out_of_bounds", "param": name}


def test_last_n_bound_defaults_to_the_fallback_context_until_props_are_read():
    assert shape({"messages": HI, "repeat_last_n": FALLBACK_CONTEXT})["repeat_last_n"] == FALLBACK_CONTEXT
    assert out_of_bounds({"repeat_last_n": FALLBACK_CONTEXT + 1})["param"] == "repeat_last_n"


@pytest.mark.parametrize("stop", ["\n", ["a"] * MAX_STOP_STRINGS, ["x" * MAX_STOP_BYTES], ["é" * 128], None])
def test_stop_within_bounds_passes(stop):
    assert shape({"messages": HI, "stop": stop})["stop"] == stop


@pytest.mark.parametrize(
    "stop", [["a"] * (MAX_STOP_STRINGS + 1), ["x" * (MAX_STOP_BYTES + 1)], "x" * 5000, ["é" * 129], [7], {"a": 1}]
)
def test_stop_over_its_bounds_is_refused(stop):
    assert out_of_bounds({"stop": stop})["param"] == "stop"


def test_dry_sequence_breakers_within_bounds_pass():
    breakers = ["\n", ":", '"', "。"][:MAX_BREAKERS]
    assert shape({"messages": HI, "dry_sequence_breakers": breakers})["dry_sequence_breakers"] == breakers


@pytest.mark.parametrize(
    "breakers",
    [[chr(33 + i % 90) for i in range(2000)], ["x"] * (MAX_BREAKERS + 1), ["b" * 41], ["ee"], ["\n", "<|im_end|>"],
     "\n", [None], [""]],
)
def test_dry_sequence_breakers_over_their_bounds_are_refused(breakers):
    assert out_of_bounds({"dry_multiplier": 0.8, "dry_sequence_breakers": breakers})["param"] == "dry_sequence_breakers"


@pytest.mark.parametrize("kwargs", [{"enable_thinking": True}, {"thinking": False}, {"reasoning_effort": "high"}, {}])
def test_allowed_template_kwargs_pass(kwargs):
    assert shape({"messages": HI, "chat_template_kwargs": kwargs})["chat_template_kwargs"] == kwargs


@pytest.mark.parametrize(
    "key", ["messages", "tools", "bos_token", "eos_token", "add_generation_prompt", "custom_tools", "date_string"]
)
def test_template_internals_in_chat_template_kwargs_are_refused_by_key(key):
    error = out_of_bounds({"chat_template_kwargs": {"enable_thinking": True, key: "x"}})
    assert error == {"message": TEMPLATE_KWARG_NOT_ALLOWED.message, "type": "invalid_request_error", "code": 400,
                     "reason": "template_kwarg_not_allowed", "param": key}


@pytest.mark.parametrize("kwargs", [{"enable_thinking": "yes"}, {"reasoning_effort": "ultra"}, {"thinking": 1}])
def test_allowed_template_kwargs_with_the_wrong_kind_of_value_are_refused(kwargs):
    assert out_of_bounds({"chat_template_kwargs": kwargs})["param"] == next(iter(kwargs))


@pytest.mark.parametrize("key", ["{{ messages }}", "a" * 65, "bös", "", "x\n"])
def test_a_key_that_is_not_a_plain_name_is_never_echoed(key):
    error = out_of_bounds({"chat_template_kwargs": {key: True}})
    assert "param" not in error
    assert error["message"] == TEMPLATE_KWARG_NOT_ALLOWED.message


def test_chat_template_kwargs_must_be_an_object():
    assert out_of_bounds({"chat_template_kwargs": ["messages"]})["param"] == "chat_template_kwargs"


def test_reasoning_effort_is_one_of_openais_values():
    assert shape({"messages": HI, "reasoning_effort": "none"})["reasoning_effort"] == "none"
    assert out_of_bounds({"reasoning_effort": "{{ bos_token }}" * 100})["param"] == "reasoning_effort"


def _nested_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 80},
                                           "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10}},
          "required": ["name"]}


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "json_object", "schema": PERSON},
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        {"type": "json_schema", "json_schema": {"name": "deep", "schema": _nested_schema(10)}},
        {"type": "text"},
        {"type": "json_object", "schema": {"type": "integer", "minimum": -(10**15), "exclusiveMaximum": 10**15}},
    ],
)
def test_ordinary_schemas_pass(response_format):
    assert shape({"messages": HI, "response_format": response_format})["response_format"] == response_format


HOSTILE_SCHEMAS = {
    "deep": _nested_schema(20),
    "huge_min_items": {"type": "array", "items": {"type": "string"}, "minItems": 1_000_000},
    "huge_max_length": {"type": "string", "maxLength": 10**12},
    "many_repeats": {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 100}
                                                      for i in range(20)}},
    "long_pattern": {"type": "string", "pattern": "(" * 300 + "a" + ")" * 300},
    "large": {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100}
                                               for i in range(400)}},
    "int64_edge_exclusive_minimum": {"type": "integer", "exclusiveMinimum": 2**63 - 1},
    "float_beyond_int64": {"type": "integer", "maximum": 1e300},
    "deep_arrays": {"enum": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_SCHEMAS))
def test_hostile_schemas_in_response_format_are_refused(name):
    schema = HOSTILE_SCHEMAS[name]
    for response_format in ({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
                            {"type": "json_object", "schema": schema}):
        assert out_of_bounds({"response_format": response_format})["param"] == "response_format"


@pytest.mark.parametrize("name", sorted(HOSTILE_SCHEMAS))
def test_hostile_schemas_in_tool_parameters_are_refused(name):
    tools = [{"type": "function", "function": {"name": "f", "parameters": HOSTILE_SCHEMAS[name]}}]
    assert out_of_bounds({"tools": tools})["param"] == "tools"


def test_the_schemas_of_one_request_are_bounded_together():
    half = {"type": "object", "description": "x" * (MAX_SCHEMA_BYTES // 2)}
    tool = {"type": "function", "function": {"name": "f", "parameters": half}}
    assert shape({"messages": HI, "tools": [tool]})["tools"] == [tool]
    assert out_of_bounds({"tools": [tool, tool]})["param"] == "tools"
    assert out_of_bounds({"tools": [tool] * (MAX_TOOLS + 1)})["param"] == "tools"


def test_a_response_format_that_is_not_an_object_is_refused():
    assert out_of_bounds({"response_format": "json"})["param"] == "response_format"


@pytest.mark.parametrize("value", [["low"], {"a": 1}, 3, True])
def test_reasoning_effort_of_another_type_is_refused_not_a_crash(value):
    assert out_of_bounds({"reasoning_effort": value})["param"] == "reasoning_effort"
    assert out_of_bounds({"chat_template_kwargs": {"reasoning_effort": value}})["param"] == "reasoning_effort"


def test_brackets_in_strings_do_not_make_a_shallow_body_deep():
    """The walk is skipped only while the brackets cannot reach the limit; past it, it runs and decides."""
    body = json.dumps({"messages": [{"role": "user", "content": "[{" * 200}]}).encode()
    assert body.count(b"[") + body.count(b"{") > 64
    assert json.loads(shape_bytes(body))["messages"][0]["content"] == "[{" * 200
