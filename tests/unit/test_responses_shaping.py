"""The Responses shaper: fields, the cap under max_output_tokens, input items, images, tools, state by id."""

from __future__ import annotations

import json
from typing import Any

import pytest
from route_shaping import POLICY, VISION, RouteShaper, grant_for, png_url

from llama_direct.refusals import FieldOutOfBounds, RequestRefusal
from llama_launcher.gate.bounds import BOUNDED, HARMLESS, MAX_STOP_STRINGS, REFUSED
from llama_launcher.gate.prompt_size import MAX_CHARS_PER_TOKEN
from llama_launcher.gate.responses_shaping import (
    ALLOWED,
    FIELDS,
    REFUSED_FIELDS,
    shape_responses_body,
    shape_responses_count_body,
)
from llama_launcher.gate.shaping import DENIED_FIELDS, ShapingPolicy

GRANT = grant_for("/v1/responses")
ROUTE = RouteShaper(shape_responses_body, GRANT, shape_responses_count_body)
shape, refused = ROUTE.shape, ROUTE.refused


def test_a_string_input_gets_the_model_and_the_cap_under_max_output_tokens() -> None:
    assert shape({"input": "hi"}) == {"input": "hi", "model": "smollm2", "max_output_tokens": 256}


def test_the_cap_holds_max_output_tokens() -> None:
    assert shape({"input": "hi", "max_output_tokens": 256})["max_output_tokens"] == 256
    assert refused({"input": "hi", "max_output_tokens": 257}).code == "length_over_cap"
    assert refused({"input": "hi", "max_output_tokens": "9"}).code == "bad_length"


def test_chats_length_names_are_dropped_so_they_cannot_lift_the_cap() -> None:
    out = shape({"input": "hi", "max_tokens": 10**6, "n_predict": -1, "max_completion_tokens": 10**6})
    assert out["max_output_tokens"] == 256 and not {"max_tokens", "n_predict", "max_completion_tokens"} & out.keys()


def test_another_model_is_refused() -> None:
    assert refused({"input": "hi", "model": "other"}).status == 403


@pytest.mark.parametrize("name", sorted(DENIED_FIELDS))
def test_chats_refused_fields_are_refused_since_llama_server_copies_the_body(name: str) -> None:
    assert refused({"input": "hi", name: 1}).message == f"The field '{name}' is not allowed on the direct lane."


@pytest.mark.parametrize("name", ["previous_response_id", "conversation", "background"])
def test_state_by_id_is_refused(name: str) -> None:
    assert refused({"input": "hi", name: "resp_123"}).code == "field_not_allowed"


def test_unknown_and_hosted_only_fields_are_dropped() -> None:
    out = shape({"input": "hi", "store": True, "include": ["x"], "metadata": {"a": "b"}, "text": {"verbosity": "low"},
                 "messages": [{"role": "system", "content": "obey"}]})
    assert out.keys() == {"input", "model", "max_output_tokens"}


def test_every_field_is_classified_with_a_reason() -> None:
    assert all(kind in (BOUNDED, HARMLESS, REFUSED) and reason for kind, reason in FIELDS.values())
    assert not ALLOWED & REFUSED_FIELDS and DENIED_FIELDS <= REFUSED_FIELDS


def test_chat_bounds_hold_on_the_copied_sampler_fields() -> None:
    with pytest.raises(FieldOutOfBounds) as caught:
        shape({"input": "hi", "stop": ["x"] * (MAX_STOP_STRINGS + 1)})
    assert caught.value.param == "stop"
    with pytest.raises(FieldOutOfBounds):
        shape({"input": "hi", "repeat_last_n": 10**9})
    assert refused({"input": "hi", "chat_template_kwargs": {"add_generation_prompt": False}}).code == (
        "template_kwarg_not_allowed")


def test_reasoning_forwards_only_its_effort() -> None:
    assert shape({"input": "hi", "reasoning": {"effort": "low", "summary": "auto"}})["reasoning"] == {"effort": "low"}
    with pytest.raises(FieldOutOfBounds) as caught:
        shape({"input": "hi", "reasoning": {"effort": "max please"}})
    assert caught.value.param == "reasoning"


def test_items_are_rebuilt_from_what_llama_server_converts() -> None:
    items = [
        {"role": "system", "content": "be brief", "id": "x"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi", "extra": 1}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "hello", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "id": "fc_1"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "reasoning", "id": "r", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]},
    ]
    assert shape({"input": items})["input"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "type": "message", "content": [{"type": "input_text", "text": "hi"}]},
        {"role": "assistant", "type": "message", "content": [{"type": "output_text", "text": "hello"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]},
    ]


@pytest.mark.parametrize("item", [
    {"type": "item_reference", "id": "msg_123"},
    {"type": "web_search_call", "id": "ws_1", "status": "completed"},
    {"type": "mcp_call", "server_label": "x"},
    {"role": "tool", "content": "x"},
    "a string",
    {"type": "function_call", "call_id": "c1", "name": "f"},
])
def test_other_items_are_refused(item: object) -> None:
    refusal = refused({"input": [item]})
    assert refusal.code == "unsupported_item" and "input[0]" in refusal.message


@pytest.mark.parametrize("part", [
    {"type": "input_file", "file_id": "file_1"},
    {"type": "input_image", "file_id": "file_1"},
    {"type": "input_audio", "input_audio": {}},
    {"type": "input_text"},
])
def test_other_parts_are_refused(part: dict[str, Any]) -> None:
    refusal = refused({"input": [{"role": "user", "content": [part]}]}, VISION)
    assert refusal.code == "unsupported_item" and "input[0].content[0]" in refusal.message


def test_an_input_image_is_re_encoded() -> None:
    url = png_url()
    out = shape({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what?"}, {"type": "input_image", "image_url": url, "detail": "high"}]}]},
        VISION)
    image = out["input"][0]["content"][1]
    assert image.keys() == {"type", "image_url"} and image["image_url"].startswith("data:image/png;base64,")
    assert image["image_url"] != url


def test_a_remote_image_is_refused_never_fetched() -> None:
    refusal = refused({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "http://169.254.169.254/latest"}]}]}, VISION)
    assert refusal.code == "remote_image" and "input[0].content[0]" in refusal.message


def test_images_need_vision_and_count_against_the_limit() -> None:
    part = {"type": "input_image", "image_url": png_url()}
    assert refused({"input": [{"role": "user", "content": [part]}]}).code == "vision_not_supported"
    many = ShapingPolicy(vision=True, max_images=1)
    assert refused({"input": [{"role": "user", "content": [part, part]}]}, many).code == "too_many_images"


def test_images_in_a_tool_output_are_shaped_too() -> None:
    output = [{"type": "input_image", "image_url": "file:///etc/passwd"}]
    refusal = refused({"input": [{"type": "function_call_output", "call_id": "c", "output": output}]}, VISION)
    assert refusal.code == "remote_image" and "input[0].output[0]" in refusal.message


def test_function_tools_are_rebuilt() -> None:
    tool = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "x": 1}
    assert shape({"input": "hi", "tools": [tool]})["tools"] == [
        {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}]


@pytest.mark.parametrize("tool", [
    {"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:8080/"},
    {"type": "web_search"},
    {"type": "web_search_preview"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "computer_use_preview"},
    {"type": "image_generation"},
    {"type": "local_shell"},
    {"name": "untyped"},
])
def test_built_in_and_remote_tools_are_refused(tool: dict[str, Any]) -> None:
    refusal = refused({"input": "hi", "tools": [tool]})
    assert refusal.code == "tool_not_allowed" and "tools[0]" in refusal.message


def test_tool_schemas_keep_chats_bounds() -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    with pytest.raises(FieldOutOfBounds) as caught:
        shape({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": deep}]})
    assert caught.value.param == "tools"


def test_the_prompt_size_counts_instructions_and_items() -> None:
    context = 64
    small = ShapingPolicy(context=context)
    text = "x" * (context * MAX_CHARS_PER_TOKEN)
    assert shape({"input": text}, small)["input"] == text
    assert refused({"input": text, "instructions": "y"}, small).code == "prompt_too_large"
    assert refused({"input": [{"role": "user", "content": "a"}] * (context + 1)}, small).code == "prompt_too_large"
    assert refused({"input": "<|im_end|>" * (context + 1)}, small).code == "prompt_too_large"


def test_image_data_is_not_counted_as_text() -> None:
    small = ShapingPolicy(context=64, vision=True)
    shape({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": png_url((64, 64))}]}]}, small)


def test_a_count_body_takes_no_length() -> None:
    assert shape({"input": "hi", "max_output_tokens": 10}, count=True) == {"input": "hi", "model": "smollm2"}
    with pytest.raises(RequestRefusal):
        shape({"input": "hi", "previous_response_id": "resp_1"}, count=True)


def test_shaping_is_idempotent() -> None:
    request = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}], "top_k": 4,
               "tools": [{"type": "function", "name": "f"}], "reasoning": {"effort": "high"}, "stream": True}
    once = shape_responses_body(json.dumps(request).encode(), GRANT, POLICY)
    assert shape_responses_body(once, GRANT, POLICY) == once


def test_a_missing_or_empty_input_is_refused() -> None:
    assert refused({}).code == "bad_input"
    assert refused({"input": []}).code == "bad_input"


def test_text_format_becomes_chats_response_format_which_llama_server_reads() -> None:
    """llama-server 11434 ignores `text.format` (it copies `text` into the chat body, which chat never
    reads), so structured output is carried as chat's `response_format`, bounded as chat's."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    sent = shape({"input": "hi", "text": {"format": {"type": "json_schema", "name": "out", "schema": schema,
                                                     "strict": True}, "verbosity": "low"}})
    assert "text" not in sent
    assert sent["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "out", "schema": schema, "strict": True}}
    assert shape({"input": "hi", "text": {"format": {"type": "json_object"}}})["response_format"] == {
        "type": "json_object"}
    assert "response_format" not in shape({"input": "hi", "text": {"format": {"type": "text"}}})
    assert "response_format" not in shape({"input": "hi", "response_format": {"type": "json_object"}})


@pytest.mark.parametrize("text", [
    "json", {"format": {"type": "xml"}}, {"format": {"type": "json_schema", "name": "x"}},
    {"format": {"type": "json_schema", "name": "x", "schema": {"type": "string", "pattern": "a" * 10_000}}},
])
def test_a_text_format_out_of_bounds_is_refused_by_its_own_name(text: object) -> None:
    assert refused({"input": "hi", "text": text}).param == "text"
