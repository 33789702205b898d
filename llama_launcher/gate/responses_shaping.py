"""The OpenAI Responses body the gate forwards (`POST /v1/responses`, `/v1/responses/input_tokens`).

Pure: bytes in, bytes out, or a `RequestRefusal`. llama-server 11434 turns a Responses body into a
chat body (`server_chat_convert_responses_to_chatcmpl`): it copies every top-level field, makes
`instructions` and `input` the messages, `max_output_tokens` the chat `max_tokens`, `reasoning.effort`
`reasoning_effort` and each function tool a chat tool, skips any other tool, and then parses the
result exactly as a chat body. So every danger of chat is here too, and the body is rebuilt from
`FIELDS`, which classifies each field the route forwards or refuses, with its reason:

- the chat sampler fields llama-server reads from the copied body keep chat's bounds (`bounds.py`);
- `input` is rebuilt item by item and part by part from what llama-server converts; an image is
  decoded and re-encoded (`images.py`), a `file_id` or any other item kind (`item_reference`, a
  built-in tool's call) is refused;
- a tool other than a function tool (`mcp` with its `server_url`, `web_search`, `file_search`,
  `code_interpreter`, `computer_use_preview`, …) is refused rather than silently skipped;
- state by id is refused: llama-server 11434 stores no response (it answers `previous_response_id`
  with its own 400, and there is no `GET /v1/responses/{id}`), so no grant could reach its own.

The prompt-size bound counts `instructions` and every item (`prompt_size.py`).
"""

from __future__ import annotations

from typing import Any

from llama_direct.lanes import RESPONSES
from llama_direct.refusals import (
    BAD_INPUT,
    TOOL_NOT_ALLOWED,
    UNSUPPORTED_ITEM,
    FieldOutOfBounds,
    RequestRefusal,
)
from llama_direct.tokens import Grant
from llama_launcher.gate.bounds import (
    BOUNDED,
    REASONING_EFFORTS,
    REFUSED,
    check_bounds_as,
    classified,
    forwarded,
    route_fields,
)
from llama_launcher.gate.pinned import RESPONSES_PIN
from llama_launcher.gate.shaping import (
    DENIED_FIELDS,
    SAMPLING_FIELDS,
    ImageCounter,
    ShapingPolicy,
    count_shaper,
    generation_shaper,
    open_body,
    shape_turns,
)

LENGTH_FIELDS = RESPONSES.length_fields

_FROM_CHAT = (*SAMPLING_FIELDS, "tool_choice", "parallel_tool_calls", "chat_template_kwargs", "reasoning_format")
"""Chat fields llama-server reads from the copied body, each with chat's bound and reason."""

FIELDS = route_fields({
    "input": (BOUNDED, "the prompt: items and parts rebuilt, images re-encoded, the slot's context"),
    "instructions": (BOUNDED, "becomes the system message: a string, counted with the prompt"),
    "max_output_tokens": (BOUNDED, "the generation's length: at most the grant's cap"),
    "tools": (BOUNDED, "function tools only, their schemas bounded as chat's; built-in and remote ones refused"),
    "reasoning": (BOUNDED, "only its effort is forwarded, one of OpenAI's values (becomes reasoning_effort)"),
    "text": (BOUNDED, "its format (structured output) becomes chat's response_format, which llama-server reads "
                      "from the copied body (it ignores text.format itself): the schema bounded as chat's"),
    "previous_response_id": (REFUSED, "state by id: llama-server keeps no stored response, so none is a grant's"),
    "conversation": (REFUSED, "an OpenAI conversation by id: state llama-server does not keep"),
    "background": (REFUSED, "asks the server to store the response for a later fetch by id, which it cannot"),
}, from_chat=_FROM_CHAT, denied=DENIED_FIELDS)
"""Every field the route forwards or refuses; any other (`store`, `include`, `metadata`, …,
and chat's own `messages` or `max_tokens`) is dropped."""

ALLOWED = forwarded(FIELDS)
REFUSED_FIELDS = classified(FIELDS, REFUSED)

_USER_ROLES = ("user", "system", "developer")
_IMAGE_KEY = "image_url"


def _shape(body: bytes, grant: Grant, policy: ShapingPolicy) -> dict[str, Any]:
    shaped = open_body(body, grant, policy, refused=REFUSED_FIELDS, allowed=ALLOWED)
    if "reasoning" in shaped:
        _shape_reasoning(shaped)
    if "text" in shaped:
        _shape_text(shaped)
    instructions = shaped.get("instructions")
    if instructions is None:
        shaped.pop("instructions", None)
    elif not isinstance(instructions, str):
        raise FieldOutOfBounds("instructions")
    tools = _shape_tools(shaped.get("tools"))
    if tools is not None:
        shaped["tools"] = tools
    check_bounds_as({**shaped, "tools": _chat_view(tools)}, {"response_format": "text"}, context=policy.context)
    return shape_turns(shaped, grant, policy, RESPONSES_PIN, _shape_input, _is_image)


shape_responses_body = generation_shaper(_shape, LENGTH_FIELDS)
shape_responses_count_body = count_shaper(_shape, LENGTH_FIELDS)
"""`/v1/responses` and `/v1/responses/input_tokens`: the same rules, the second with no length."""


def _is_image(key: str, value: object) -> bool:
    """Items are rebuilt, so an `image_url` key is only ever a shaped `input_image` part's data URL."""
    return key == _IMAGE_KEY


def _shape_reasoning(shaped: dict[str, Any]) -> None:
    reasoning = shaped["reasoning"]
    if reasoning is None:
        del shaped["reasoning"]
        return
    if not isinstance(reasoning, dict):
        raise FieldOutOfBounds("reasoning")
    effort = reasoning.get("effort")
    if effort is None:
        del shaped["reasoning"]
        return
    if not (isinstance(effort, str) and effort in REASONING_EFFORTS):
        raise FieldOutOfBounds("reasoning")
    shaped["reasoning"] = {"effort": effort}


def _shape_text(shaped: dict[str, Any]) -> None:
    """`text.format` as chat's `response_format` (bounded with the other schemas in `check_bounds_as`):
    `json_schema` carries its `name`, `schema` and `strict` into chat's wrapper, `json_object` is itself,
    `text` (the default) is nothing; `text`'s other keys (`verbosity`) are dropped."""
    text = shaped.pop("text")
    if text is None:
        return
    if not isinstance(text, dict):
        raise FieldOutOfBounds("text")
    fmt = text.get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        shaped["response_format"] = {"type": "json_object"}
        return
    if kind != "json_schema" or not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
        raise FieldOutOfBounds("text")
    wrapper = {name: fmt[name] for name in ("name", "schema", "strict") if name in fmt}
    shaped["response_format"] = {"type": "json_schema", "json_schema": wrapper}


def _shape_tools(tools: object) -> list[Any] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise FieldOutOfBounds("tools")
    return [_shape_tool(f"tools[{index}]", tool) for index, tool in enumerate(tools)]


def _shape_tool(where: str, tool: object) -> dict[str, Any]:
    """A function tool rebuilt from its own fields; anything else is a built-in or remote tool."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise RequestRefusal(TOOL_NOT_ALLOWED, where=where)
    if not isinstance(tool.get("name"), str):
        raise FieldOutOfBounds("tools")
    shaped = {"type": "function", "name": tool["name"]}
    for name, kind in (("description", str), ("parameters", dict), ("strict", bool)):
        value = tool.get(name)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise FieldOutOfBounds("tools")
        shaped[name] = value
    return shaped


def _chat_view(tools: list[Any] | None) -> list[Any] | None:
    """The tools as chat carries them, for chat's schema bounds."""
    if tools is None:
        return None
    return [{"type": "function", "function": {"parameters": tool.get("parameters")}} for tool in tools]


def _shape_input(value: object, images: ImageCounter) -> str | list[Any]:
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise RequestRefusal(BAD_INPUT)
    return [_shape_item(f"input[{index}]", item, images) for index, item in enumerate(value)]


def _shape_item(where: str, item: object, images: ImageCounter) -> dict[str, Any]:
    """One input item, rebuilt from the fields llama-server converts for its kind."""
    if not isinstance(item, dict):
        raise RequestRefusal(UNSUPPORTED_ITEM, where=where)
    kind, role = item.get("type"), item.get("role")
    if role in _USER_ROLES and kind in (None, "message"):
        shaped = {"role": role, "content": _content(where, item.get("content"), images, _input_part)}
        return {**shaped, "type": "message"} if kind else shaped
    if role == "assistant" and kind == "message":
        return {"role": role, "type": kind, "content": _content(where, item.get("content"), images, _output_part)}
    if kind == "function_call":
        return {"type": kind, **_strings(where, item, ("call_id", "name", "arguments"))}
    if kind == "function_call_output":
        output = item.get("output")
        shaped_output = output if isinstance(output, str) else _parts(f"{where}.output", output, images, _input_part)
        return {"type": kind, **_strings(where, item, ("call_id",)), "output": shaped_output}
    if kind == "reasoning":
        return {"type": kind, "summary": _texts(where, item.get("summary"), "summary_text", allow_empty=True),
                "content": _texts(where, item.get("content"), "reasoning_text", allow_empty=False)}
    raise RequestRefusal(UNSUPPORTED_ITEM, where=where)


def _strings(where: str, item: dict[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    if not all(isinstance(item.get(name), str) for name in names):
        raise RequestRefusal(UNSUPPORTED_ITEM, where=where)
    return {name: item[name] for name in names}


def _texts(where: str, value: object, kind: str, *, allow_empty: bool) -> list[dict[str, str]]:
    if not isinstance(value, list) or not (value or allow_empty):
        raise RequestRefusal(UNSUPPORTED_ITEM, where=where)
    if not all(isinstance(part, dict) and isinstance(part.get("text"), str) for part in value):
        raise RequestRefusal(UNSUPPORTED_ITEM, where=where)
    return [{"type": kind, "text": part["text"]} for part in value]


def _content(where: str, content: object, images: ImageCounter, shape_part: Any) -> str | list[Any]:
    if isinstance(content, str):
        return content
    return _parts(f"{where}.content", content, images, shape_part)


def _parts(where: str, parts: object, images: ImageCounter, shape_part: Any) -> list[Any]:
    if not isinstance(parts, list):
        raise RequestRefusal(UNSUPPORTED_ITEM, where=where)
    return [shape_part(f"{where}[{index}]", part, images) for index, part in enumerate(parts)]


def _input_part(where: str, part: object, images: ImageCounter) -> dict[str, Any]:
    """`input_text`, or `input_image` with a data URL, re-encoded; a `file_id`, `input_file` or audio is refused."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "input_text" and isinstance(part, dict) and isinstance(part.get("text"), str):
        return {"type": kind, "text": part["text"]}
    if kind == "input_image" and isinstance(part, dict) and "file_id" not in part:
        return {"type": kind, _IMAGE_KEY: images.shape(part.get(_IMAGE_KEY), where)}
    raise RequestRefusal(UNSUPPORTED_ITEM, "part", where=where)


def _output_part(where: str, part: object, images: ImageCounter) -> dict[str, Any]:
    """An assistant message's `output_text` (or `input_text`) or `refusal`; its annotations are dropped."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("output_text", "input_text") and isinstance(part, dict) and isinstance(part.get("text"), str):
        return {"type": kind, "text": part["text"]}
    if kind == "refusal" and isinstance(part, dict) and isinstance(part.get("refusal"), str):
        return {"type": kind, "refusal": part["refusal"]}
    raise RequestRefusal(UNSUPPORTED_ITEM, "part", where=where)
