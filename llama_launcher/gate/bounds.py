"""What one forwarded field may cost llama-server: each allowed field's bound, with its reason.

Pure: a shaped request in, nothing out, or a refusal naming the field. llama-server 11434 accepts
the `last_n` fields up to INT32_MAX and allocates a buffer of that size while it sets up the
sampler, on its main loop, so one 123-byte body held 4 GB and stalled every other user for
seconds. The same holds, more slowly, for each DRY sequence breaker (a scan of the whole
vocabulary), each stop string (checked on every token) and each JSON schema (turned into a
grammar). So every field that sizes a buffer or a per-token scan is held here to a bound the gate
knows, and `FIELD_COSTS` classifies every field the lane forwards: a unit test fails when a new
allowed field has no entry.

Over a bound the answer is `FieldOutOfBounds`: 400 with a fixed message and the field's name in
`error.param` (the OpenAI place for it), only when the name is a plain identifier, so a key taken
from the body is never echoed unless it is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from llama_direct.refusals import FieldOutOfBounds, TemplateKwargNotAllowed

FALLBACK_CONTEXT = 4096
"""The `last_n` bound while llama-server's `/props` has not been read: llama-server's own default
context for small models, and a ring buffer of 4096 tokens costs 16 KB."""

MAX_STOP_STRINGS = 16
MAX_STOP_BYTES = 256
"""Every stop string is searched for on every generated token (`find_stopping_strings`, full and
partial), so their count and length set a per-token cost. OpenAI allows 4."""

MAX_BREAKERS = 4
"""Each DRY sequence breaker costs a detokenizing scan of the whole vocabulary at sampler setup,
on llama-server's main loop (`llama_sampler_init_dry`), and one of more than one character also
tokenizes its tail once for every vocabulary token that ends in its first character: measured on
2 busy cores, eight one-character breakers added about 0.4 s before the first token and eight
two-character ones about 4 s, whatever their length. So breakers are single characters, at most
as many as llama-server's own default set (`\\n`, `:`, `"`, `*`)."""

MAX_SCHEMA_BYTES = 32 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_REPEATS = 1000
MAX_PATTERN_BYTES = 512
MAX_TOOLS = 64
"""A JSON schema (`response_format`, and each tool's `parameters`) becomes a grammar on
llama-server's main loop (`json_schema_to_grammar`, recursive), so the schemas of one request are
bounded together in size, each in depth (objects and arrays both count, so 32 is about 10 levels
of nested object schemas), in the sum of its repetition counts (`minItems`,
`maxLength`, … each expand into that many grammar rules) and in the length of each regex
`pattern` (parsed by recursive descent)."""

MAX_SCHEMA_NUMBER = 10**15
"""Integer bounds are read into an int64 and then shifted by one (`exclusiveMinimum` + 1), and a
float beyond int64 is cast without a check, so bounds stay far inside it (and exact as doubles)."""
NUMBER_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")

REPEAT_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
                   "minContains", "maxContains")

TEMPLATE_KWARGS: dict[str, str] = {
    "enable_thinking": "bool: llama-server reads it itself to turn reasoning on or off",
    "thinking": "bool: the same switch under the name some templates use",
    "reasoning_effort": "one of REASONING_EFFORTS: the same value as the top-level field",
}
"""`chat_template_kwargs` is copied over every template variable, `messages`, `tools`,
`bos_token` and `add_generation_prompt` included, so only these keys pass."""

REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
"""OpenAI's values; the field is rendered into the prompt by templates that read it."""

BOUNDED = "bounded"
HARMLESS = "harmless"
REFUSED = "refused"
"""The three classes of a body field: forwarded within a bound, forwarded as it is, or refused with
a 400 naming it. Every other field is dropped. Each route's format has one table of its fields with
their class and reason: `FIELD_COSTS` here for chat, and one in each shaper module (`route_fields`)."""

FIELD_COSTS: dict[str, tuple[str, str]] = {
    "repeat_last_n": (BOUNDED, "sizes the penalty sampler's ring buffer at setup: -1 to the slot's context"),
    "dry_penalty_last_n": (BOUNDED, "sizes DRY's ring buffer and per-token scan: -1 to the slot's context"),
    "dry_sequence_breakers": (BOUNDED, "a vocabulary scan each at setup: at most 4, one character each"),
    "stop": (BOUNDED, "searched for on every token: at most 16 of at most 256 bytes"),
    "response_format": (BOUNDED, "its schema becomes a grammar: size, depth and repetitions bounded"),
    "tools": (BOUNDED, "their parameter schemas become a grammar: bounded with response_format's"),
    "chat_template_kwargs": (BOUNDED, "copied over template variables: allow-listed keys only"),
    "reasoning_effort": (BOUNDED, "rendered into the prompt by some templates: OpenAI's values only"),
    "top_logprobs": (BOUNDED, "every token carries that many: at most 20 (checked in shaping)"),
    "n": (BOUNDED, "each choice takes a slot: 1 only (checked in shaping)"),
    "max_tokens": (BOUNDED, "the generation's length: at most the grant's cap (checked in shaping)"),
    "max_completion_tokens": (BOUNDED, "an alias of max_tokens, held to the same cap"),
    "n_predict": (BOUNDED, "an alias of max_tokens, held to the same cap"),
    "messages": (BOUNDED, "the prompt: the body's size, the slot's context and the image limits"),
    "model": (BOUNDED, "must be the grant's model (checked in shaping)"),
    "logprobs": (BOUNDED, "a bool, else llama-server reads it as n_probs (checked in shaping)"),
    "dry_allowed_length": (HARMLESS, "a longer allowed length only shortens DRY's scan"),
    "dry_multiplier": (HARMLESS, "a float factor; DRY's cost is set by dry_penalty_last_n"),
    "dry_base": (HARMLESS, "a float; llama-server caps the exponent so the penalty cannot overflow"),
    "xtc_probability": (HARMLESS, "a float llama-server clamps to [0, 1]"),
    "xtc_threshold": (HARMLESS, "a float llama-server clamps to [0, 1]"),
    "mirostat": (HARMLESS, "llama-server clamps it to 0, 1 or 2; each is one pass over the candidates"),
    "mirostat_tau": (HARMLESS, "a float target; no buffer"),
    "mirostat_eta": (HARMLESS, "a float rate; no buffer"),
    "temperature": (HARMLESS, "a float; one pass over the candidates"),
    "top_p": (HARMLESS, "clamped to [0, 1]; sorts the candidates, as the default chain does"),
    "top_k": (HARMLESS, "clamped to the vocabulary; no worse than top_k 0, which sorts them all"),
    "min_p": (HARMLESS, "clamped to [0, 1]; one pass over the candidates"),
    "typical_p": (HARMLESS, "a float; one pass over the candidates"),
    "presence_penalty": (HARMLESS, "a float; its scan is sized by repeat_last_n"),
    "frequency_penalty": (HARMLESS, "a float; its scan is sized by repeat_last_n"),
    "repeat_penalty": (HARMLESS, "a float; its scan is sized by repeat_last_n"),
    "seed": (HARMLESS, "seeds the sampler's random generator"),
    "tool_choice": (HARMLESS, "picks among the bounded tools"),
    "parallel_tool_calls": (HARMLESS, "a bool for the template"),
    "stream": (HARMLESS, "a bool"),
    "stream_options": (HARMLESS, "llama-server reads only include_usage, a bool"),
    "return_progress": (HARMLESS, "a few progress chunks during prompt processing"),
    "timings_per_token": (HARMLESS, "a few numbers per chunk"),
    "cache_prompt": (HARMLESS, "false only reprocesses the bounded prompt"),
    "reasoning_format": (HARMLESS, "a name llama-server looks up, refusing unknown ones"),
    "user": (HARMLESS, "ignored by llama-server"),
}


def check_bounds(shaped: dict[str, Any], *, context: int) -> None:
    """Refuse the first field of `shaped` over its bound; `context` is the slot's, from `/props`."""
    for name in ("repeat_last_n", "dry_penalty_last_n"):
        _check_last_n(shaped, name, context)
    _check_strings(shaped.get("stop"), "stop", MAX_STOP_STRINGS, MAX_STOP_BYTES, single=True)
    breakers = shaped.get("dry_sequence_breakers")
    _check_strings(breakers, "dry_sequence_breakers", MAX_BREAKERS, 4)
    if breakers is not None and any(len(breaker) != 1 for breaker in breakers):
        raise FieldOutOfBounds("dry_sequence_breakers")
    _check_template_kwargs(shaped.get("chat_template_kwargs"))
    effort = shaped.get("reasoning_effort")
    if effort is not None and not _is_effort(effort):
        raise FieldOutOfBounds("reasoning_effort")
    _check_schemas(shaped)


def check_bounds_as(view: dict[str, Any], names: Mapping[str, str], *, context: int) -> None:
    """`check_bounds` on a chat-shaped view of another format's body (its stop strings under `stop`,
    its tool schemas under `tools[].function.parameters`), naming a refused field by the format's own
    name in `names` (view name -> body name)."""
    try:
        check_bounds(view, context=context)
    except TemplateKwargNotAllowed:
        raise
    except FieldOutOfBounds as refusal:
        renamed = names.get(refusal.param or "")
        if renamed is None:
            raise
        raise FieldOutOfBounds(renamed) from None


def classified(table: Mapping[str, tuple[str, str]], kind: str) -> frozenset[str]:
    """The names of one class (`BOUNDED`, `HARMLESS` or `REFUSED`) in a format's field table."""
    return frozenset(name for name, (cls, _reason) in table.items() if cls == kind)


def forwarded(table: Mapping[str, tuple[str, str]]) -> frozenset[str]:
    """The fields a format forwards: those within a bound and those harmless as they are."""
    return classified(table, BOUNDED) | classified(table, HARMLESS)


def route_fields(own: Mapping[str, tuple[str, str]], *, from_chat: Iterable[str] = (),
                 denied: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """Another route format's field table, written once the same way: the fields it shares with chat
    (with chat's bound and reason, `FIELD_COSTS`), its `model`, its own fields, then the fields chat
    refuses (`shaping.DENIED_FIELDS`) that llama-server would read from this body too."""
    return {
        **{name: FIELD_COSTS[name] for name in from_chat},
        "model": (BOUNDED, "must be the grant's model, which a router routes by"),
        **own,
        **{name: (REFUSED, "refused on chat (shaping.DENIED_FIELDS): llama-server reads it from this body too")
           for name in sorted(denied)},
    }


def _check_last_n(shaped: dict[str, Any], name: str, context: int) -> None:
    """-1 (the whole context) and 0 (off) keep their meaning; llama-server decides what it accepts."""
    value = shaped.get(name)
    if value is not None and not (_is_int(value) and -1 <= value <= context):
        raise FieldOutOfBounds(name)


def _check_strings(value: object, name: str, count: int, size: int, *, single: bool = False) -> None:
    items = [value] if single and isinstance(value, str) else value
    if items is None:
        return
    if not isinstance(items, list) or len(items) > count:
        raise FieldOutOfBounds(name)
    for item in items:
        if not isinstance(item, str) or _utf8_length(item) > size:
            raise FieldOutOfBounds(name)


def _check_template_kwargs(kwargs: object) -> None:
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise FieldOutOfBounds("chat_template_kwargs")
    for key, value in kwargs.items():
        if key not in TEMPLATE_KWARGS:
            raise TemplateKwargNotAllowed(key)
        valid = _is_effort(value) if key == "reasoning_effort" else isinstance(value, bool)
        if not valid:
            raise TemplateKwargNotAllowed(key)


def _check_schemas(shaped: dict[str, Any]) -> None:
    total = 0
    for name, schema in _schemas(shaped):
        total += _utf8_length(json.dumps(schema, ensure_ascii=False, separators=(",", ":")))
        if total > MAX_SCHEMA_BYTES:
            raise FieldOutOfBounds(name)
        _check_schema(name, schema)


def _schemas(shaped: dict[str, Any]) -> Iterator[tuple[str, object]]:
    """Every schema llama-server turns into a grammar, by the field that carries it."""
    response_format = shaped.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise FieldOutOfBounds("response_format")
        yield "response_format", response_format.get("schema")
        wrapper = response_format.get("json_schema")
        yield "response_format", wrapper.get("schema") if isinstance(wrapper, dict) else wrapper
    tools = shaped.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
            raise FieldOutOfBounds("tools")
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            yield "tools", function.get("parameters") if isinstance(function, dict) else function


def _check_schema(name: str, schema: object) -> None:
    """Depth, repetition counts and patterns, walked without recursion."""
    repeats = 0
    stack: list[tuple[object, int]] = [(schema, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth >= MAX_SCHEMA_DEPTH:
            raise FieldOutOfBounds(name)
        if isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
            continue
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
            elif _is_number(value) and key in REPEAT_KEYWORDS:
                repeats += max(int(value), 0)
            elif _over_its_bound(key, value):
                raise FieldOutOfBounds(name)
        if repeats > MAX_SCHEMA_REPEATS:
            raise FieldOutOfBounds(name)


def _over_its_bound(key: str, value: object) -> bool:
    """A schema number too large for llama-server's int64 arithmetic, or a pattern too long."""
    if key in NUMBER_KEYWORDS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return abs(value) > MAX_SCHEMA_NUMBER
    return key == "pattern" and isinstance(value, str) and _utf8_length(value) > MAX_PATTERN_BYTES


def _utf8_length(text: str) -> int:
    """Bytes, as llama-server counts them; a lone surrogate from a JSON escape counts too."""
    return len(text.encode("utf-8", "surrogatepass"))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_effort(value: object) -> bool:
    return isinstance(value, str) and value in REASONING_EFFORTS


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

