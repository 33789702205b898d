"""The Anthropic Messages body the gate forwards (`POST /v1/messages`, `/v1/messages/count_tokens`).

Pure: bytes in, bytes out, or a `RequestRefusal`. llama-server 11434 builds a chat body from a
Messages body (`server_chat_convert_anthropic_to_oai`) out of a fixed set of its fields: `system`,
`messages`, `tools` (each `input_schema` becoming a chat tool's parameters), `tool_choice`,
`stop_sequences` (chat's `stop`), `max_tokens` (4096 when absent), `temperature`, `top_p`, `top_k`,
`stream`, `chat_template_kwargs`, `thinking` and `metadata`; a router reads `model` to route it. The
body is rebuilt here from `FIELDS`, which classifies each field the route forwards or refuses:

- `max_tokens`, which Anthropic requires, is held to the grant's cap, and set to it when absent;
- each message is rebuilt block by block from what llama-server converts: `text`, `thinking`,
  `image` (a base64 source, decoded and re-encoded; a `url` source is refused, never handed to
  llama-server to fetch), `tool_use` and `tool_result`. Any other block is refused;
- a server tool (`web_search_…`, `bash_…`, `text_editor_…`, `code_execution_…`, `computer_…`, an
  MCP toolset) is refused: only custom tools, with their schema bounded as chat's;
- `thinking` of type `enabled` sets llama-server's reasoning budget (`thinking_budget_tokens`, 10000
  when `budget_tokens` is absent) and nothing else: it does not switch the template's thinking on.
  Its `budget_tokens`, which Anthropic requires, must lie between 1 and the grant's cap (the
  registry's `MESSAGES.budget_fields`), so it never asks for more than the generation may have;
- the prompt-size bound counts `system`, every message and the tools (`prompt_size.py`).
"""

from __future__ import annotations

from typing import Any

from llama_direct.lanes import MESSAGES
from llama_direct.refusals import (
    BAD_INPUT,
    BAD_MESSAGES,
    REMOTE_IMAGE,
    TOOL_NOT_ALLOWED,
    UNSUPPORTED_ITEM,
    FieldOutOfBounds,
    RequestRefusal,
)
from llama_direct.tokens import Grant
from llama_launcher.gate.bounds import BOUNDED, HARMLESS, REFUSED, check_bounds_as, classified, forwarded, route_fields
from llama_launcher.gate.pinned import MESSAGES_PIN
from llama_launcher.gate.shaping import (
    ImageCounter,
    ShapingPolicy,
    count_shaper,
    generation_shaper,
    open_body,
    shape_turns,
)

LENGTH_FIELDS = MESSAGES.length_fields

FIELDS = route_fields({
    "max_tokens": (BOUNDED, "the generation's length: at most the grant's cap, which is set when absent"),
    "messages": (BOUNDED, "the prompt: blocks rebuilt, images re-encoded, the slot's context"),
    "system": (BOUNDED, "becomes the system message: a string or text blocks, counted with the prompt"),
    "stop_sequences": (BOUNDED, "becomes stop, searched for on every token: chat's bound"),
    "tools": (BOUNDED, "custom tools only, their input_schema bounded as chat's; server tools refused"),
    "tool_choice": (HARMLESS, "auto, any, tool or none: picks among the bounded tools"),
    "thinking": (BOUNDED, "enabled sets llama-server's reasoning budget: budget_tokens from 1 to the cap"),
}, from_chat=("temperature", "top_p", "top_k", "stream", "chat_template_kwargs"))
"""Every field the route forwards; any other (`metadata`, `service_tier`, `container`, …) is dropped,
since llama-server would not read it. No field is refused by name: llama-server copies none wholesale."""

ALLOWED = forwarded(FIELDS)
REFUSED_FIELDS = classified(FIELDS, REFUSED)

_ROLES = ("user", "assistant")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
_THINKING = ("disabled", "adaptive", "enabled")
_DATA_MARK = ";base64,"


def _shape(body: bytes, grant: Grant, policy: ShapingPolicy) -> dict[str, Any]:
    shaped = open_body(body, grant, policy, refused=REFUSED_FIELDS, allowed=ALLOWED)
    thinking = shaped.pop("thinking", None)
    if thinking is not None:
        shaped["thinking"] = _thinking(thinking, grant.max_tokens)
    for name, shape in (("tool_choice", _tool_choice), ("system", _system), ("tools", _tools)):
        if shaped.get(name) is None:
            shaped.pop(name, None)
        else:
            shaped[name] = shape(shaped[name])
    tools = shaped.get("tools")
    view = {**shaped, "stop": shaped.get("stop_sequences"), "tools": _chat_view(tools)}
    check_bounds_as(view, {"stop": "stop_sequences"}, context=policy.context)
    return shape_turns(shaped, grant, policy, MESSAGES_PIN, _shape_messages, _is_image)


shape_messages_body = generation_shaper(_shape, LENGTH_FIELDS)
shape_messages_count_body = count_shaper(_shape, LENGTH_FIELDS)
"""`/v1/messages` and `/v1/messages/count_tokens`: the same rules, the second with no length."""


def _is_image(key: str, value: object) -> bool:
    """Blocks are rebuilt, so a `source` object is only ever a shaped image's base64 data."""
    return key == "source" and isinstance(value, dict)


def _thinking(value: object, cap: int) -> dict[str, Any]:
    if not (isinstance(value, dict) and value.get("type") in _THINKING):
        raise FieldOutOfBounds("thinking")
    if value["type"] != "enabled":
        return {"type": value["type"]}
    budget = value.get("budget_tokens")
    if not (type(budget) is int and 1 <= budget <= cap):
        raise FieldOutOfBounds("thinking")
    return {"type": "enabled", "budget_tokens": budget}



def _tool_choice(value: object) -> dict[str, Any]:
    if not (isinstance(value, dict) and value.get("type") in _TOOL_CHOICES):
        raise FieldOutOfBounds("tool_choice")
    shaped = {"type": value["type"]}
    if isinstance(value.get("name"), str):
        shaped["name"] = value["name"]
    return shaped


def _system(value: object) -> str | list[Any]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(_is_text_block(block) for block in value):
        return [{"type": "text", "text": block["text"]} for block in value]
    raise RequestRefusal(BAD_INPUT, "system")


def _tools(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise FieldOutOfBounds("tools")
    return [_tool(f"tools[{index}]", tool) for index, tool in enumerate(value)]


def _tool(where: str, tool: object) -> dict[str, Any]:
    """A custom tool (no `type`, or `custom`) rebuilt; a typed server tool is refused."""
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        raise RequestRefusal(TOOL_NOT_ALLOWED, where=where)
    if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema", {}), dict):
        raise FieldOutOfBounds("tools")
    shaped: dict[str, Any] = {"name": tool["name"]}
    if isinstance(tool.get("description"), str):
        shaped["description"] = tool["description"]
    if "input_schema" in tool:
        shaped["input_schema"] = tool["input_schema"]
    return shaped


def _chat_view(tools: list[Any] | None) -> list[Any] | None:
    if tools is None:
        return None
    return [{"type": "function", "function": {"parameters": tool.get("input_schema")}} for tool in tools]


def _shape_messages(messages: object, images: ImageCounter) -> list[Any]:
    if not isinstance(messages, list) or not messages:
        raise RequestRefusal(BAD_MESSAGES)
    return [_shape_message(f"messages[{index}]", message, images) for index, message in enumerate(messages)]


def _shape_message(where: str, message: object, images: ImageCounter) -> dict[str, Any]:
    if not isinstance(message, dict) or message.get("role") not in _ROLES:
        raise RequestRefusal(BAD_MESSAGES, "message", where=where)
    content = message.get("content")
    if isinstance(content, str):
        return {"role": message["role"], "content": content}
    if not isinstance(content, list):
        raise RequestRefusal(BAD_MESSAGES, "content", where=where)
    blocks = [_block(f"{where}.content[{index}]", block, images) for index, block in enumerate(content)]
    return {"role": message["role"], "content": blocks}


def _block(where: str, block: object, images: ImageCounter) -> dict[str, Any]:
    """One content block, rebuilt from the fields llama-server converts for its kind."""
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(block, dict):
        raise RequestRefusal(UNSUPPORTED_ITEM, "block", where=where)
    if _is_text_block(block):
        return {"type": "text", "text": block["text"]}
    if kind == "thinking" and isinstance(block.get("thinking"), str):
        return {"type": kind, "thinking": block["thinking"]}
    if kind == "image":
        return _image(where, block.get("source"), images)
    if kind == "tool_use" and isinstance(block.get("id"), str) and isinstance(block.get("name"), str):
        tool_input = block.get("input", {})
        if isinstance(tool_input, dict):
            return {"type": kind, "id": block["id"], "name": block["name"], "input": tool_input}
    if kind == "tool_result" and isinstance(block.get("tool_use_id"), str):
        return {"type": kind, "tool_use_id": block["tool_use_id"], "content": _result(where, block, images)}
    raise RequestRefusal(UNSUPPORTED_ITEM, "block", where=where)


def _result(where: str, block: dict[str, Any], images: ImageCounter) -> str | list[Any]:
    """A tool result's content: a string, or text and image blocks."""
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestRefusal(UNSUPPORTED_ITEM, "block", where=where)
    shaped = []
    for index, inner in enumerate(content):
        part = f"{where}.content[{index}]"
        if isinstance(inner, dict) and _is_text_block(inner):
            shaped.append({"type": "text", "text": inner["text"]})
        elif isinstance(inner, dict) and inner.get("type") == "image":
            shaped.append(_image(part, inner.get("source"), images))
        else:
            raise RequestRefusal(UNSUPPORTED_ITEM, "block", where=part)
    return shaped


def _image(where: str, source: object, images: ImageCounter) -> dict[str, Any]:
    """A base64 image re-encoded as one; a `url` (or `file`) source is never passed on to be fetched."""
    if not isinstance(source, dict) or source.get("type") != "base64":
        if isinstance(source, dict) and source.get("type") == "url":
            raise RequestRefusal(REMOTE_IMAGE, part=where)
        raise RequestRefusal(UNSUPPORTED_ITEM, "block", where=where)
    media_type, data = source.get("media_type"), source.get("data")
    url = f"data:{media_type};base64,{data}" if isinstance(media_type, str) and isinstance(data, str) else None
    shaped = images.shape(url, where)
    header, _, payload = shaped.partition(_DATA_MARK)
    return {"type": "image", "source": {"type": "base64", "media_type": header[len("data:"):], "data": payload}}


def _is_text_block(block: object) -> bool:
    return isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
