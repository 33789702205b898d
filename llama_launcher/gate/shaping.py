"""The chat body the gate forwards: rebuilt from an allow-list, never passed through.

Pure: bytes in, bytes out, or a `RequestRefusal`. It runs once per chat request on either lane
(the broker's baseline comes through the gate too), so the rules below hold for every generation.

llama-server copies every top-level field of an OpenAI chat body into its own request parameters
(`oaicompat_chat_params_parse`, then `server_schema::make_llama_cmpl_schema`), so a field the
client sends can pick a slot, load an adapter, replace the sampler chain or lift the length
limit. Hence three lists:

- `ALLOWED_FIELDS` are forwarded, checked where they matter (`model`, `n`, `top_logprobs`, the
  length fields, `messages`), and each field that sizes a buffer or a per-token scan in
  llama-server is held to its bound (`bounds.py`, which classifies every allowed field).
- `DENIED_FIELDS` are refused with a 400 naming the field: each reaches into the server (slots,
  adapters, KV cache, context shifting, raw prompts and grammars, the sampler chain, template
  internals) or removes a bound (`ignore_eos`, `t_max_predict_ms`, `n_probs`, `logit_bias`
  banning the end token). A client that sends one meant it, so it learns that the lane will not.
- Any other field is dropped: OpenAI clients send fields llama-server ignores anyway.

Length: `max_tokens`, `max_completion_tokens` and `n_predict` are aliases to llama-server, which
takes the first present in that order, so each one present must be within the grant's cap, and a
body with none gets `max_tokens` set to the cap. `null`, and `n_predict: -1` (unlimited), count
as absent: llama-server reads `null` as "use the default", which is unbounded.

The prompt must be able to fit one slot's context (`prompt_size.py`): too many messages,
special-token strings or characters of text are refused before llama-server tokenizes them.

Shaping its own output again yields the same bytes: the rules are a fixed point, so a client that
sends an already-shaped body (or a proxy that shapes first) gets exactly that body forwarded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llama_direct.lanes import CHAT
from llama_direct.refusals import (
    BAD_CONTENT_PART,
    BAD_FIELD,
    BAD_IMAGE,
    BAD_LENGTH,
    BAD_MESSAGES,
    BODY_TOO_LARGE,
    CONFLICTING_FIELDS,
    FIELD_NOT_ALLOWED,
    INVALID_JSON,
    JSON_TOO_DEEP,
    LENGTH_OVER_CAP,
    MODEL_MISMATCH,
    N_NOT_SUPPORTED,
    NOT_AN_OBJECT,
    TOO_MANY_IMAGES,
    TOP_LOGPROBS_OVER_CAP,
    VISION_NOT_SUPPORTED,
    RequestRefusal,
)
from llama_direct.tokens import Grant
from llama_launcher.gate.bounds import FALLBACK_CONTEXT, check_bounds
from llama_launcher.gate.images import PixelBudget, shape_image_url
from llama_launcher.gate.pinned import CHAT_PIN, Pin, pinned_prompt
from llama_launcher.gate.prompt_size import ImageKey, chat_image, check_fits, measure

SAMPLER_FIELDS = frozenset(
    {
        "dry_multiplier",
        "dry_base",
        "dry_allowed_length",
        "dry_penalty_last_n",
        "dry_sequence_breakers",
        "xtc_probability",
        "xtc_threshold",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)
"""Extra samplers. Those that size a buffer or a per-token scan (`dry_penalty_last_n`,
`dry_sequence_breakers`) are held to a bound in `bounds.py`, which also says why each of the others
is harmless."""

SAMPLING_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "typical_p", "presence_penalty", "frequency_penalty",
    "repeat_penalty", "repeat_last_n", "seed", "stop", "stream", "return_progress", "timings_per_token",
    "cache_prompt", "user", *sorted(SAMPLER_FIELDS),
)
"""The chat fields that llama-server also reads from a Responses or completions body, which it takes
whole: each keeps chat's bound and reason there (`bounds.FIELD_COSTS`)."""

LENGTH_FIELDS = CHAT.length_fields
"""From the chat route's registry entry; the first is the name the cap is set under."""

ALLOWED_FIELDS = (
    frozenset(
        {
            "messages",
            "model",
            "stream",
            "stream_options",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "typical_p",
            "presence_penalty",
            "frequency_penalty",
            "repeat_penalty",
            "repeat_last_n",
            "seed",
            "stop",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "logprobs",
            "top_logprobs",
            "return_progress",
            "timings_per_token",
            "cache_prompt",
            "chat_template_kwargs",
            "reasoning_format",
            "reasoning_effort",
            "n",
            "user",
        }
    )
    | frozenset(LENGTH_FIELDS)
    | SAMPLER_FIELDS
)

DENIED_FIELDS = frozenset(
    {
        # slots, adapters and the KV cache
        "id_slot",
        "slot_id",
        "lora",
        "n_cmpl",
        "n_keep",
        "n_discard",
        "n_cache_reuse",
        # bounds and time limits
        "t_max_predict_ms",
        "t_max_prompt_ms",
        "ignore_eos",
        "logit_bias",
        "n_probs",
        "post_sampling_probs",
        "min_keep",
        "sse_ping_interval",
        # the sampler chain and constrained decoding, set by the server from the template
        "samplers",
        "backend_sampling",
        "grammar",
        "grammar_lazy",
        "grammar_triggers",
        "grammar_type",
        "json_schema",
        "preserved_tokens",
        # the prompt and the template's internals
        "prompt",
        "tokens",
        "input_prefix",
        "input_suffix",
        "input_extra",
        "chat_format",
        "chat_parser",
        "generation_prompt",
        "parse_tool_calls",
        "message_delimiters",
        "add_generation_prompt",
        "continue_final_message",
        "echo",
        # reasoning budget, forced by the server from the template
        "reasoning_budget_tokens",
        "thinking_budget_tokens",
        "reasoning_budget_message",
        "reasoning_budget_start_tag",
        "reasoning_budget_end_tag",
        "reasoning_budget_end_tags",
        "reasoning_control",
        # debugging output
        "verbose",
        "response_fields",
        "return_tokens",
    }
)

MAX_TOP_LOGPROBS = 20
"""OpenAI's own limit; llama-server has none, and every generated token carries that many."""


@dataclass(frozen=True)
class ShapingPolicy:
    """The gate's limits for one model. `vision` and `context` (one slot's) come from `/props`."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_json_depth: int = 64
    vision: bool = False
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images: int = 8
    max_request_pixels: int = 48_000_000
    """All of one request's images together (four 12-megapixel photos): what its decoding may cost."""
    context: int = FALLBACK_CONTEXT


Shape = Callable[[bytes, Grant, ShapingPolicy], dict[str, Any]]
"""A format's rules: the client's body to the body rebuilt, before its length is settled."""


def generation_shaper(shape: Shape, length_fields: tuple[str, ...]) -> Callable[[bytes, Grant, ShapingPolicy], bytes]:
    """A format's generation route from its rules: the compact JSON body to forward, each length field
    held to the grant's cap (the first set to it when the body names none), or a `RequestRefusal`."""

    def shape_generation(body: bytes, grant: Grant, policy: ShapingPolicy) -> bytes:
        shaped = shape(body, grant, policy)
        cap_length(shaped, grant.max_tokens, length_fields)
        return encode_body(shaped)

    return shape_generation


def count_shaper(shape: Shape, length_fields: tuple[str, ...]) -> Callable[[bytes, Grant, ShapingPolicy], bytes]:
    """A format's token-counting route from its rules: the same body with no length, since llama-server
    only renders and counts its prompt."""

    def shape_count(body: bytes, grant: Grant, policy: ShapingPolicy) -> bytes:
        return encode_body(drop_fields(shape(body, grant, policy), length_fields))

    return shape_count


def _shape_chat(body: bytes, grant: Grant, policy: ShapingPolicy) -> dict[str, Any]:
    request = decode_body(body, policy)
    _check_model(request, grant)  # the grant first: another model is refused before anything else is read
    refuse_denied(request, DENIED_FIELDS)
    request = _merge_repetition_penalty(request)
    shaped = {name: value for name, value in request.items() if name in ALLOWED_FIELDS}
    check_n(shaped)
    _check_logprobs(shaped)
    check_bounds(shaped, context=policy.context)
    legacy_image = request.get("image_base64")
    return shape_turns(shaped, grant, policy, CHAT_PIN,
                       lambda messages, images: _shape_messages(messages, legacy_image, images))


shape_chat_body = generation_shaper(_shape_chat, LENGTH_FIELDS)
shape_chat_count_body = count_shaper(_shape_chat, LENGTH_FIELDS)


TurnShaper = Callable[[object, "ImageCounter"], Any]
"""A format's turns (chat's and Messages' `messages`, Responses' `input`) rebuilt, its images counted."""


def shape_turns(shaped: dict[str, Any], grant: Grant, policy: ShapingPolicy, pin: Pin, shape: TurnShaper,
                is_image: ImageKey = chat_image) -> dict[str, Any]:
    """What every templated format ends with, over its field table (`pin`): its turns rebuilt, the prompt
    (its system prompt, the turns and the tools) held to the slot's context, then the grant's pinned
    system prompt put in place (`pinned.pinned_prompt`)."""
    turns = shape(shaped.get(pin.turns), ImageCounter(policy))
    system = shaped.get(pin.system) if pin.system is not None else None
    prompt = [*([] if system is None else [system]), *(turns if isinstance(turns, list) else [turns])]
    check_fits(measure(prompt, shaped.get("tools"), is_image=is_image), policy.context)
    shaped[pin.turns] = turns
    pinned_prompt(shaped, grant, pin)
    return shaped


def open_body(body: bytes, grant: Grant, policy: ShapingPolicy, *, refused: frozenset[str],
              allowed: frozenset[str]) -> dict[str, Any]:
    """What every format's shaper starts with: the decoded body's `allowed` fields, once the model is
    the grant's and no `refused` field is present (every other field is dropped)."""
    request = decode_body(body, policy)
    _check_model(request, grant)
    refuse_denied(request, refused)
    return {name: value for name, value in request.items() if name in allowed}


def refuse_denied(request: dict[str, Any], denied: frozenset[str]) -> None:
    """Refuse the body naming the first (in name order) of its fields that `denied` lists."""
    present = sorted(denied & request.keys())
    if present:
        raise RequestRefusal(FIELD_NOT_ALLOWED, field=present[0])


def drop_fields(shaped: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: value for name, value in shaped.items() if name not in names}


def encode_body(shaped: dict[str, Any]) -> bytes:
    """The compact UTF-8 JSON llama-server gets; a lone surrogate from a JSON escape is refused."""
    try:
        return _ENCODER.encode(shaped).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestRefusal(INVALID_JSON, "unicode_escape") from None


def decode_body(body: bytes, policy: ShapingPolicy) -> dict[str, Any]:
    """The body as a JSON object, within the policy's size and depth, with no duplicate key, NaN or
    infinity; else a refusal."""
    if len(body) > policy.max_body_bytes:
        raise RequestRefusal(BODY_TOO_LARGE, "over", limit=policy.max_body_bytes)
    try:
        value = _DECODER.decode(body.decode("utf-8"))
    except RecursionError:
        raise _too_deep(policy) from None
    except (UnicodeDecodeError, ValueError):
        raise RequestRefusal(INVALID_JSON) from None
    if not isinstance(value, dict):
        raise RequestRefusal(NOT_AN_OBJECT)
    if _may_be_too_deep(body, policy.max_json_depth) and _depth(value) > policy.max_json_depth:
        raise _too_deep(policy)
    return value


BRACKET_COUNT_BYTES = 64 * 1024
"""Up to this size counting the body's brackets costs less than walking its nodes; past it (an image
inline: 20 ms to count 20 MB, 60 µs to walk), the walk is cheaper."""


def _may_be_too_deep(body: bytes, limit: int) -> bool:
    """Each level of nesting opens with a `{` or `[`, so a small body with no more of them than the
    limit (in strings too) cannot be too deep: the walk is skipped for every ordinary chat."""
    return len(body) > BRACKET_COUNT_BYTES or body.count(b"{") + body.count(b"[") > limit


def _too_deep(policy: ShapingPolicy) -> RequestRefusal:
    return RequestRefusal(JSON_TOO_DEEP, limit=policy.max_json_depth)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Python keeps the last of two equal keys and other parsers the first, so neither is guessed."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _refuse_constant(name: str) -> float:
    raise ValueError("NaN and Infinity are not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number too large for a float")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_refuse_constant, parse_float=_finite_float)
"""Built once: `json.loads` with hooks builds a decoder per call, on every lane request."""
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _depth(value: object) -> int:
    """Nesting depth without recursion, so a deep body costs a loop, not the stack."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _merge_repetition_penalty(request: dict[str, Any]) -> dict[str, Any]:
    """`repetition_penalty` (the Hugging Face name) is llama-server's `repeat_penalty`."""
    if "repetition_penalty" not in request:
        return request
    value = request["repetition_penalty"]
    if "repeat_penalty" in request and request["repeat_penalty"] != value:
        raise RequestRefusal(CONFLICTING_FIELDS)
    renamed: dict[str, Any] = {}
    for name, item in request.items():
        if name == "repetition_penalty":
            renamed.setdefault("repeat_penalty", value)
        elif name != "repeat_penalty":
            renamed[name] = item
        else:
            renamed.setdefault("repeat_penalty", item)
    return renamed


def _check_model(shaped: dict[str, Any], grant: Grant) -> None:
    """The grant's model always reaches llama-server: a router routes by it, and refuses a body without one."""
    model = shaped.get("model")
    if model is None:
        shaped["model"] = grant.model
    elif model != grant.model:
        raise RequestRefusal(MODEL_MISMATCH)


def check_n(shaped: dict[str, Any]) -> None:
    """Several completions would each take a slot; llama-server reads `n` as `n_cmpl`. `null` is absent."""
    if "n" in shaped and shaped["n"] is None:
        del shaped["n"]
    value = shaped.get("n")
    if value is not None and not (is_int(value) and value == 1):
        raise RequestRefusal(N_NOT_SUPPORTED)


def _check_logprobs(shaped: dict[str, Any]) -> None:
    """A non-boolean `logprobs` reaches llama-server as `n_probs` (its alias), past `top_logprobs`."""
    logprobs = shaped.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestRefusal(BAD_FIELD)
    top = shaped.get("top_logprobs")
    if top is not None and not (is_int(top) and 0 <= top <= MAX_TOP_LOGPROBS):
        raise RequestRefusal(TOP_LOGPROBS_OVER_CAP, limit=MAX_TOP_LOGPROBS)


def cap_length(shaped: dict[str, Any], cap: int, fields: tuple[str, ...]) -> None:
    """Hold every length alias in `fields` to the cap, and set the cap under the first when the body
    names none."""
    for name in fields:
        if name not in shaped:
            continue
        value = shaped[name]
        if value is None or (name == "n_predict" and is_int(value) and value == -1):
            del shaped[name]
            continue
        if not is_int(value) or value < 1:
            raise RequestRefusal(BAD_LENGTH, name=name, limit=cap)
        if value > cap:
            raise RequestRefusal(LENGTH_OVER_CAP, name=name, limit=cap)
    if not any(name in shaped for name in fields):
        shaped[fields[0]] = cap


def _shape_messages(messages: object, legacy_image: object, images: ImageCounter) -> list[Any]:
    if not isinstance(messages, list) or not messages:
        raise RequestRefusal(BAD_MESSAGES)
    shaped = [_shape_message(index, message, images) for index, message in enumerate(messages)]
    if legacy_image is not None:
        _append_legacy_image(shaped, legacy_image, images)
    return shaped


class ImageCounter:
    """Shapes each image in turn and refuses the one past `max_images` or past the pixel budget."""

    def __init__(self, policy: ShapingPolicy) -> None:
        self.policy = policy
        self.count = 0
        self.budget = PixelBudget(policy.max_request_pixels)

    def shape(self, url: object, part: str) -> str:
        if not self.policy.vision:
            raise RequestRefusal(VISION_NOT_SUPPORTED)
        self.count += 1
        if self.count > self.policy.max_images:
            raise RequestRefusal(TOO_MANY_IMAGES, limit=self.policy.max_images)
        if not isinstance(url, str):
            raise RequestRefusal(BAD_IMAGE, "not_a_string", part=part)
        return shape_image_url(url, part=part, policy=self.policy, budget=self.budget)


def _shape_message(index: int, message: object, images: ImageCounter) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise RequestRefusal(BAD_MESSAGES, "message", where=where)
    content = message.get("content")
    if content is None or isinstance(content, str):
        return message
    if not isinstance(content, list):
        raise RequestRefusal(BAD_MESSAGES, "content", where=where)
    parts = [_shape_part(f"{where}.content[{i}]", part, images) for i, part in enumerate(content)]
    return {**message, "content": parts}


def _shape_part(where: str, part: object, images: ImageCounter) -> dict[str, Any]:
    """Text passes; an image is rebuilt around its shaped URL; audio, video and the rest are refused."""
    if isinstance(part, dict) and part.get("type") == "text":
        return part
    if isinstance(part, dict) and part.get("type") == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else None
        return {"type": "image_url", "image_url": {"url": images.shape(url, where)}}
    raise RequestRefusal(BAD_CONTENT_PART, where=where)


def _append_legacy_image(messages: list[Any], image: object, images: ImageCounter) -> None:
    """Old clients send one top-level `image_base64`; it belongs to the last user message."""
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if not users:
        raise RequestRefusal(BAD_MESSAGES, "legacy_image")
    last = users[-1]
    if not isinstance(image, str):
        raise RequestRefusal(BAD_IMAGE, "not_a_base64_string", part="image_base64")
    url = image if image.startswith("data:") else f"data:image/png;base64,{image}"
    content = messages[last].get("content")
    parts: list[Any] = [] if content is None else [{"type": "text", "text": content}]
    if isinstance(content, list):
        parts = list(content)
    part = {"type": "image_url", "image_url": {"url": images.shape(url, "image_base64")}}
    messages[last] = {**messages[last], "content": [*parts, part]}


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
