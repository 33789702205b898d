"""The Messages shaper: fields, the required max_tokens held to the cap, blocks, images, tools, thinking."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image
from route_shaping import HI, POLICY, VISION, RouteShaper, grant_for, png_base64

from llama_direct.refusals import FieldOutOfBounds
from llama_launcher.gate.bounds import BOUNDED, HARMLESS, MAX_STOP_STRINGS
from llama_launcher.gate.messages_shaping import (
    ALLOWED,
    FIELDS,
    shape_messages_body,
    shape_messages_count_body,
)
from llama_launcher.gate.prompt_size import MAX_CHARS_PER_TOKEN
from llama_launcher.gate.shaping import ShapingPolicy

GRANT = grant_for("/v1/messages")
ROUTE = RouteShaper(shape_messages_body, GRANT, shape_messages_count_body)
shape, refused = ROUTE.shape, ROUTE.refused


def image_block(source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image", "source": source}


def test_a_body_without_max_tokens_gets_the_cap_not_llama_servers_4096() -> None:
    assert shape({"messages": HI}) == {"messages": HI, "model": "smollm2", "max_tokens": 256}


def test_max_tokens_is_held_to_the_cap() -> None:
    assert shape({"messages": HI, "max_tokens": 256})["max_tokens"] == 256
    assert refused({"messages": HI, "max_tokens": 1024}).code == "length_over_cap"
    assert refused({"messages": HI, "max_tokens": 0}).code == "bad_length"


def test_another_model_is_refused() -> None:
    assert refused({"messages": HI, "model": "claude-sonnet-4-5"}).status == 403


def test_every_field_is_classified_with_a_reason_and_others_are_dropped() -> None:
    assert all(kind in (BOUNDED, HARMLESS) and reason for kind, reason in FIELDS.values())
    out = shape({"messages": HI, "metadata": {"user_id": "u"}, "id_slot": 0, "n_predict": 10**6, "lora": [],
                 "service_tier": "auto", "grammar": "root ::= x"})
    assert out.keys() <= ALLOWED and out.keys() == {"messages", "model", "max_tokens"}


def test_the_system_prompt_and_blocks_are_rebuilt() -> None:
    request = {
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "citations": []}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}, "cache_control": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}],
                 "is_error": False},
            ]},
        ],
    }
    out = shape(request)
    assert out["system"] == [{"type": "text", "text": "be brief"}]
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}]}]},
    ]


@pytest.mark.parametrize("block", [
    {"type": "document", "source": {"type": "url", "url": "http://x"}},
    {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}},
    {"type": "redacted_thinking", "data": "x"},
    {"type": "search_result"},
    {"type": "text"},
    {"type": "tool_use", "id": "t", "name": "f", "input": "not an object"},
])
def test_other_blocks_are_refused(block: dict[str, Any]) -> None:
    refusal = refused({"messages": [{"role": "user", "content": [block]}]}, VISION)
    assert refusal.code == "unsupported_item" and "messages[0].content[0]" in refusal.message


@pytest.mark.parametrize("message", [{"role": "system", "content": "x"}, {"role": "user"}, "hi",
                                     {"role": "user", "content": {"type": "text"}}])
def test_malformed_messages_are_refused(message: object) -> None:
    assert refused({"messages": [message]}).code == "bad_messages"


def test_a_base64_image_is_re_encoded_as_a_base64_image() -> None:
    data = png_base64()
    block = image_block({"type": "base64", "media_type": "image/png", "data": data})
    out = shape({"messages": [{"role": "user", "content": [block]}]}, VISION)
    (shaped,) = out["messages"][0]["content"]
    assert shaped["source"]["type"] == "base64" and shaped["source"]["media_type"] == "image/png"
    assert shaped["source"].keys() == {"type", "media_type", "data"} and shaped["source"]["data"] != data
    assert Image.open(io.BytesIO(base64.b64decode(shaped["source"]["data"]))).size == (2, 2)


def test_a_url_source_is_refused_never_passed_on_to_be_fetched() -> None:
    block = image_block({"type": "url", "url": "http://169.254.169.254/latest/meta-data"})
    refusal = refused({"messages": [{"role": "user", "content": [block]}]}, VISION)
    assert refusal.code == "remote_image" and "messages[0].content[0]" in refusal.message


def test_an_image_in_a_tool_result_is_shaped_too() -> None:
    result = {"type": "tool_result", "tool_use_id": "t", "content": [image_block({"type": "url", "url": "http://x"})]}
    refusal = refused({"messages": [{"role": "user", "content": [result]}]}, VISION)
    assert refusal.code == "remote_image" and "messages[0].content[0].content[0]" in refusal.message


def test_images_need_vision() -> None:
    block = image_block({"type": "base64", "media_type": "image/png", "data": png_base64()})
    assert refused({"messages": [{"role": "user", "content": [block]}]}).code == "vision_not_supported"


def test_a_base64_source_that_is_not_an_image_is_refused() -> None:
    block = image_block({"type": "base64", "media_type": "image/png", "data": base64.b64encode(b"<svg/>").decode()})
    assert refused({"messages": [{"role": "user", "content": [block]}]}, VISION).code == "bad_image"


def test_custom_tools_are_rebuilt_and_server_tools_refused() -> None:
    tool = {"name": "f", "description": "d", "input_schema": {"type": "object"}, "cache_control": {}}
    assert shape({"messages": HI, "tools": [tool]})["tools"] == [
        {"name": "f", "description": "d", "input_schema": {"type": "object"}}]
    for server_tool in ({"type": "web_search_20250305", "name": "web_search"},
                        {"type": "bash_20250124", "name": "bash"},
                        {"type": "text_editor_20250124", "name": "str_replace_editor"},
                        {"type": "code_execution_20250522", "name": "code_execution"},
                        {"type": "mcp_toolset", "mcp_server_name": "x"}):
        refusal = refused({"messages": HI, "tools": [server_tool]})
        assert refusal.code == "tool_not_allowed" and "tools[0]" in refusal.message


def test_stop_sequences_and_schemas_keep_chats_bounds_under_their_own_names() -> None:
    with pytest.raises(FieldOutOfBounds) as caught:
        shape({"messages": HI, "stop_sequences": ["x"] * (MAX_STOP_STRINGS + 1)})
    assert caught.value.param == "stop_sequences"
    with pytest.raises(FieldOutOfBounds) as caught:
        shape({"messages": HI, "tools": [{"name": "f", "input_schema": {"maxLength": 10**6}}]})
    assert caught.value.param == "tools"
    assert refused({"messages": HI, "chat_template_kwargs": {"bos_token": "x"}}).code == "template_kwarg_not_allowed"


@pytest.mark.parametrize("budget", [None, 0, GRANT.max_tokens + 1, 10**9, True, 1.5, "64"])
def test_thinking_enabled_needs_a_budget_within_the_cap(budget: object) -> None:
    """llama-server turns `enabled` into its reasoning budget (10000 when absent), so the budget is
    required and held to the grant's cap."""
    thinking = {"type": "enabled"} if budget is None else {"type": "enabled", "budget_tokens": budget}
    with pytest.raises(FieldOutOfBounds) as caught:
        shape({"messages": HI, "thinking": thinking})
    assert caught.value.param == "thinking"


def test_thinking_is_rebuilt_with_its_budget() -> None:
    enabled = {"type": "enabled", "budget_tokens": GRANT.max_tokens, "extra": 1}
    assert shape({"messages": HI, "thinking": enabled})["thinking"] == {"type": "enabled",
                                                                         "budget_tokens": GRANT.max_tokens}
    assert shape({"messages": HI, "thinking": {"type": "disabled"}})["thinking"] == {"type": "disabled"}


def test_tool_choice_is_rebuilt() -> None:
    out = shape({"messages": HI, "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True}})
    assert out["tool_choice"] == {"type": "tool", "name": "f"}
    with pytest.raises(FieldOutOfBounds):
        shape({"messages": HI, "tool_choice": "auto"})


def test_the_prompt_size_counts_the_system_prompt_and_messages() -> None:
    context = 64
    small = ShapingPolicy(context=context)
    text = "x" * (context * MAX_CHARS_PER_TOKEN - len("user"))  # the role's string counts too, as in chat
    shape({"messages": [{"role": "user", "content": text}]}, small)
    assert refused({"system": "y", "messages": [{"role": "user", "content": text}]}, small).code == "prompt_too_large"
    assert refused({"messages": HI * (context + 1)}, small).code == "prompt_too_large"


def test_a_count_body_takes_no_length() -> None:
    assert shape({"messages": HI, "max_tokens": 10**6}, count=True) == {"messages": HI, "model": "smollm2"}


def test_shaping_is_idempotent() -> None:
    request = {"messages": HI, "system": "s", "tools": [{"name": "f", "input_schema": {}}],
               "tool_choice": {"type": "auto"}, "stream": True, "top_k": 3}
    once = shape_messages_body(json.dumps(request).encode(), GRANT, POLICY)
    assert shape_messages_body(once, GRANT, POLICY) == once
