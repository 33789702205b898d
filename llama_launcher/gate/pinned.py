"""A system prompt pinned in the grant (`Grant.system_prompt`): the conversation is the host's, not the user's.

Pure: a body its format's shaper has rebuilt, and the grant, in; the body with the pinned prompt first,
or a refusal. A grant without a pin changes nothing here: the conversation is the user's own.

A host app (or the operator, per model) pins a prompt as OpenAI's and Gemini's ephemeral tokens lock
their session's instructions. For the pin to hold, every way a client could speak as the system in a
format whose body llama-server renders through the model's chat template is closed (`Pin`, one per
format):

- the client's own system turn: chat's `system` and `developer` roles (any role but user, assistant and
  tool), Messages' `system`, Responses' `instructions` and its `system` and `developer` items;
- a turn spelled in text: llama-server tokenizes the rendered prompt with special-token parsing on, so
  `<|im_start|>system` typed in a message, a name, a tool call's arguments, reasoning or a tool's
  description opens a real turn. Any string (or key) of the turns, the tools or the tool choice that
  holds one of `PIN_MARKERS` is refused, 400 `special_token_text`;
- (`chat_template_kwargs`, which a template may render, is allow-listed for every grant already:
  switches and a reasoning effort, no text: `bounds.TEMPLATE_KWARGS`);
- a body no template renders (a raw prompt: completions; embeddings and rerank inputs): no pin can be
  put first there, so a pinned grant is refused on those routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llama_direct.refusals import SPECIAL_TOKEN_TEXT, SYSTEM_PROMPT_PINNED, RequestRefusal
from llama_direct.tokens import Grant
from llama_launcher.gate.prompt_size import SPECIAL_MARKERS

PIN_MARKERS = (*SPECIAL_MARKERS, "<｜", "<bos>", "<eos>")
"""The prompt-size bound's markers, and DeepSeek's full-width bar (`<｜begin▁of▁sentence｜>`) and
Gemma's sequence tokens: strings that are special tokens in the vocabularies we know."""

TURN_ROLES = ("user", "assistant", "tool")
"""The roles a client's turn may take under a pin; the system's is the pin's alone."""


@dataclass(frozen=True)
class Pin:
    """Where a format keeps its system prompt and its turns."""

    turns: str
    """The body field of the conversation: chat's and Messages' `messages`, Responses' `input`."""
    system: str | None
    """The body field that is the system prompt (Messages' `system`, Responses' `instructions`); None:
    the system prompt is the first turn (chat)."""


CHAT_PIN = Pin(turns="messages", system=None)
MESSAGES_PIN = Pin(turns="messages", system="system")
RESPONSES_PIN = Pin(turns="input", system="instructions")


def pinned_prompt(shaped: dict[str, Any], grant: Grant, pin: Pin | None) -> None:
    """Put the grant's pinned prompt in `shaped` (a body of `pin`'s format), or refuse the body; a grant
    without a pin leaves it as it is. `pin` None: the route renders no template, and a pinned grant is
    refused there."""
    prompt = grant.system_prompt
    if prompt is None:
        return
    if pin is None:
        raise RequestRefusal(SYSTEM_PROMPT_PINNED, "raw_prompt")
    if pin.system is not None and shaped.get(pin.system) is not None:
        raise RequestRefusal(SYSTEM_PROMPT_PINNED, where=pin.system)
    turns = shaped[pin.turns]
    if isinstance(turns, list):
        for index, turn in enumerate(turns):
            if "role" in turn and turn["role"] not in TURN_ROLES:
                raise RequestRefusal(SYSTEM_PROMPT_PINNED, where=f"{pin.turns}[{index}].role")
    refuse_special_text(shaped, (pin.turns, "tools", "tool_choice"))
    if pin.system is None:
        shaped[pin.turns] = [{"role": "system", "content": prompt}, *turns]
    else:
        shaped[pin.system] = prompt


def refuse_special_text(shaped: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Refuse the first string or key under `fields` that holds one of `PIN_MARKERS`; the refusal names
    the field and its item's index, never the client's text."""
    for where, text in _texts(shaped, fields):
        if "<" in text or "[" in text:
            for marker in PIN_MARKERS:
                if marker in text:
                    raise RequestRefusal(SPECIAL_TOKEN_TEXT, where=where)


def _texts(shaped: dict[str, Any], fields: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """Every string and key under each field, with where it sits (the field, and the index of its item
    when the field is a list). Iterative, so a deep value cannot exhaust the stack."""
    for name in fields:
        value = shaped.get(name)
        tops = [(f"{name}[{index}]", item) for index, item in enumerate(value)] if isinstance(value, list) else \
            [(name, value)]
        for where, top in tops:
            stack = [top]
            while stack:
                item = stack.pop()
                if isinstance(item, str):
                    yield where, item
                elif isinstance(item, list):
                    stack.extend(item)
                elif isinstance(item, dict):
                    for key, inner in item.items():
                        yield where, key
                        stack.append(inner)
