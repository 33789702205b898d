"""Whether a prompt can fit the slot it is going to, decided before llama-server tokenizes it.

Pure: the shaped messages (and tools) and one slot's context in, nothing out, or a refusal.

llama-server refuses a prompt longer than the slot's context only after tokenizing the rendered
template, with special-token parsing on, on an HTTP thread that ignores a client that has left. That
work is not bounded by the context: `tokenizer_st_partition` grows quadratically with the number of
special-token strings (100k copies of `<|im_end|>`, 1 MB: 42 s of CPU), 30,000 one-character
messages took 46 s, and 8 MB of plain text added 900 MB of RSS, each refused afterwards for not
fitting. So the gate refuses, before anything is sent, a prompt that provably cannot fit, from three
lower bounds on its token count, each of which alone must be within the context:

- **messages**: every message renders to at least one token, whatever the template;
- **special-token strings**: each occurrence of a marker below is at least one token (parsed as a
  special token, or as text that starts a token of its own);
- **text**: a token covers at most `MAX_CHARS_PER_TOKEN` characters of text (prose averages about
  4, code 3; long runs of one character are the only text that reaches 16 in the vocabularies we
  know), so more characters than `context * MAX_CHARS_PER_TOKEN` cannot fit. Image data is not
  text: it is bounded by the image limits.

What that leaves, measured on a 2-core box against SmolLM2 (8,192-token slots): at each bound, the
worst prompt of each shape cost llama-server 0.06 s (text), 0.22 s (special strings) and 1.4 s
(messages) of CPU before its refusal, where a legitimate prompt of half the context costs 36 s and
a full one about 140 s (prompt processing), so none costs more than a small fraction of an honest
full-context prompt (see docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llama_direct.refusals import INPUTS_TOO_LARGE, PROMPT_TOO_LARGE, RequestRefusal

MAX_CHARS_PER_TOKEN = 16

SPECIAL_MARKERS = (
    "<|",  # ChatML, Llama 3, Phi, Qwen, SmolLM: <|im_start|>, <|eot_id|>, <|endoftext|>, ...
    "<s>",  # Llama 2, Mistral: begin of sequence
    "</s>",  # end of sequence
    "[INST]",  # Mistral, Llama 2: a user turn
    "[/INST]",
    "<start_of_turn>",  # Gemma
    "<end_of_turn>",
    "<think>",  # reasoning markers, special tokens in several vocabularies
    "</think>",
)
"""Strings that are special tokens in common vocabularies; none contains another's start, so their
occurrences never overlap and each is at least one token. A model whose special tokens look
different is still bounded by the text and message bounds."""

ImageKey = Callable[[str, object], bool]
"""Whether a (key, value) pair of a body holds image data, which is not text: each format says where
its shaped images sit, and only there is a string skipped."""


def chat_image(key: str, value: object) -> bool:
    """A chat `image_url` part's `{"url": ...}` (a string `image_url` elsewhere is counted as text)."""
    return key == "image_url" and isinstance(value, dict)


@dataclass(frozen=True)
class PromptSize:
    """Three lower bounds on a prompt's token count, counted once over the shaped body."""

    messages: int
    special: int
    chars: int


def measure(messages: list[object], tools: object = None, *, is_image: ImageKey = chat_image) -> PromptSize:
    """Count the messages, the special-token strings and the characters of text in `messages` and
    `tools` (every string value, image data aside: by default an `image_url` part's URL is not text)."""
    special = chars = 0
    for text in _strings([messages, tools], is_image):
        chars += len(text)
        if "<" in text or "[" in text:
            special += sum(text.count(marker) for marker in SPECIAL_MARKERS)
    return PromptSize(messages=len(messages), special=special, chars=chars)


def check_fits(size: PromptSize, context: int) -> None:
    """Refuse a prompt that cannot fit `context` tokens by any of the three bounds."""
    if size.messages > context:
        raise RequestRefusal(PROMPT_TOO_LARGE, "messages", limit=context)
    if size.special > context:
        raise RequestRefusal(PROMPT_TOO_LARGE, "special", limit=context)
    if size.chars > context * MAX_CHARS_PER_TOKEN:
        raise RequestRefusal(PROMPT_TOO_LARGE, limit=context)


MAX_INPUTS = 64
"""Embedding inputs or rerank documents in one request: each is a task of its own on llama-server."""
INPUT_CONTEXTS = 8
"""All of one request's inputs together may hold what this many full slots would: each input alone
must fit one slot, and their sum is bounded too, so one request costs at most a few full prompts."""


def check_inputs(texts: list[str], context: int, *, prefix: str = "") -> None:
    """Each text (after `prefix`, which each one is tokenized with: a rerank query) must fit one slot
    by the three bounds, and all of them together `INPUT_CONTEXTS` slots."""
    total = PromptSize(messages=0, special=0, chars=0)
    for text in texts:
        size = measure([prefix + text])
        check_fits(size, context)
        total = PromptSize(total.messages + 1, total.special + size.special, total.chars + size.chars)
    limit = context * INPUT_CONTEXTS
    if total.special > limit or total.chars > limit * MAX_CHARS_PER_TOKEN:
        raise RequestRefusal(INPUTS_TOO_LARGE, limit=limit)


def _strings(value: object, is_image: ImageKey) -> Iterator[str]:
    """Every string value in a JSON value, skipping the URL of an image part. Keys are not counted:
    the message keys are not rendered, and a tool schema's are bounded with it (`bounds.py`).
    Iterative, so a deep value cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(inner for key, inner in item.items() if not is_image(key, inner))
