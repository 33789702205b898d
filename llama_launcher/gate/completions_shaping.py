"""The OpenAI completions body the gate forwards (`POST /v1/completions`).

Pure: bytes in, bytes out, or a `RequestRefusal`. llama-server 11434 reads a completions body as its
own request parameters, every top-level field of it (`make_llama_cmpl_schema`), so chat's refused
fields are refused here too (`shaping.DENIED_FIELDS`, except `prompt`, which this route is for), and
the body is rebuilt from `FIELDS`. The prompt is raw text: no template is rendered, and llama-server
tokenizes it with special-token parsing on, so a user of this route types the model's markers as
they wish (what a raw completion is); the prompt-size bound still counts them
(`prompt_size.py`). The prompt is one string: a list of prompts is several generations (each a slot),
and a prompt of token ids or `multimodal_data` is refused.

Length: `n_predict` wins over `max_tokens` in llama-server, so both are held to the grant's cap and
`max_tokens` is set to it when neither is present. `logprobs` is llama-server's `n_probs` here (a
count, as in OpenAI's completions), held to chat's `top_logprobs` bound.
"""

from __future__ import annotations

from typing import Any

from llama_direct.lanes import COMPLETIONS
from llama_direct.refusals import BAD_INPUT, FieldOutOfBounds, RequestRefusal
from llama_direct.tokens import Grant
from llama_launcher.gate.bounds import BOUNDED, REFUSED, check_bounds, classified, forwarded, route_fields
from llama_launcher.gate.pinned import pinned_prompt
from llama_launcher.gate.prompt_size import check_fits, measure
from llama_launcher.gate.shaping import (
    DENIED_FIELDS,
    MAX_TOP_LOGPROBS,
    SAMPLING_FIELDS,
    ShapingPolicy,
    cap_length,
    check_n,
    encode_body,
    is_int,
    open_body,
)

LENGTH_FIELDS = COMPLETIONS.length_fields

_FROM_CHAT = (*SAMPLING_FIELDS, "stream_options", "n")

FIELDS = route_fields({
    "prompt": (BOUNDED, "one string, within the slot's context by the prompt-size bound"),
    "max_tokens": (BOUNDED, "the generation's length: at most the grant's cap"),
    "n_predict": (BOUNDED, "llama-server's own length field, which wins over max_tokens: the same cap"),
    "logprobs": (BOUNDED, "llama-server's n_probs: every token carries that many, at most 20"),
}, from_chat=_FROM_CHAT, denied=DENIED_FIELDS - {"prompt"})
"""Every field the route forwards or refuses; any other (`suffix`, `best_of`, …) is dropped."""

ALLOWED = forwarded(FIELDS)
REFUSED_FIELDS = classified(FIELDS, REFUSED)


def shape_completions_body(body: bytes, grant: Grant, policy: ShapingPolicy) -> bytes:
    """The completions body to forward to `/v1/completions`, or a `RequestRefusal`."""
    shaped = open_body(body, grant, policy, refused=REFUSED_FIELDS, allowed=ALLOWED)
    pinned_prompt(shaped, grant, None)  # no template renders this body: no pin can be put first
    check_n(shaped)
    _check_logprobs(shaped)
    check_bounds(shaped, context=policy.context)
    cap_length(shaped, grant.max_tokens, LENGTH_FIELDS)
    prompt = _prompt(shaped.get("prompt"))
    check_fits(measure([prompt]), policy.context)
    shaped["prompt"] = prompt
    return encode_body(shaped)


def _prompt(value: object) -> str:
    """One string; the OpenAI SDKs may wrap it in a list of one."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise RequestRefusal(BAD_INPUT, "prompt")
    return value


def _check_logprobs(shaped: dict[str, Any]) -> None:
    value = shaped.get("logprobs")
    if value is None:
        shaped.pop("logprobs", None)
    elif not (is_int(value) and 0 <= value <= MAX_TOP_LOGPROBS):
        raise FieldOutOfBounds("logprobs")
