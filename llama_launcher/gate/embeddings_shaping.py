"""The OpenAI embeddings body the gate forwards (`POST /v1/embeddings`).

Pure: bytes in, bytes out, or a `RequestRefusal`. llama-server 11434 answers it only for a model
started with `--embeddings` (501 otherwise) and reads four fields of it (`handle_embeddings_impl`):
`input`, `content` (its native spelling, which also takes token ids and images), `encoding_format`
and `embd_normalize`. Each input is one task of its own, tokenized with special-token parsing on,
so `input` is bounded in count (`prompt_size.MAX_INPUTS`), each input must fit one slot and all of
them together a few (`prompt_size.check_inputs`). Token ids are refused: the OpenAI SDKs send text.
"""

from __future__ import annotations

from llama_direct.refusals import BAD_INPUT, FieldOutOfBounds, RequestRefusal
from llama_direct.tokens import Grant
from llama_launcher.gate.bounds import BOUNDED, REFUSED, classified, forwarded, route_fields
from llama_launcher.gate.pinned import pinned_prompt
from llama_launcher.gate.prompt_size import MAX_INPUTS, check_inputs
from llama_launcher.gate.shaping import ShapingPolicy, encode_body, open_body

FIELDS = route_fields({
    "input": (BOUNDED, "a string or at most 64 strings, each within one slot, all within 8"),
    "encoding_format": (BOUNDED, "float or base64, as llama-server accepts (the OpenAI SDKs ask for base64)"),
    "content": (REFUSED, "llama-server's native input: token ids and images, past the input bounds"),
})
"""Every field the route forwards or refuses; any other (`dimensions`, `user`, `embd_normalize`) is
dropped."""

ALLOWED = forwarded(FIELDS)
REFUSED_FIELDS = classified(FIELDS, REFUSED)
ENCODINGS = ("float", "base64")


def shape_embeddings_body(body: bytes, grant: Grant, policy: ShapingPolicy) -> bytes:
    """The embeddings body to forward to `/v1/embeddings`, or a `RequestRefusal`."""
    shaped = open_body(body, grant, policy, refused=REFUSED_FIELDS, allowed=ALLOWED)
    pinned_prompt(shaped, grant, None)  # no template renders this body: no pin can be put first
    encoding = shaped.get("encoding_format")
    if encoding is None:
        shaped.pop("encoding_format", None)
    elif encoding not in ENCODINGS:
        raise FieldOutOfBounds("encoding_format")
    inputs = shaped.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not (isinstance(texts, list) and 0 < len(texts) <= MAX_INPUTS and all(isinstance(t, str) for t in texts)):
        raise RequestRefusal(BAD_INPUT, "strings", limit=MAX_INPUTS)
    check_inputs(texts, policy.context)
    return encode_body(shaped)
