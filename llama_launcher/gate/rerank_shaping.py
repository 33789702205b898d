"""The rerank body the gate forwards (`POST /v1/rerank`, Jina's format).

Pure: bytes in, bytes out, or a `RequestRefusal`. llama-server 11434 answers it only for a model
started with `--reranking` and reads `query`, `documents` (or TEI's `texts`), `top_n` and, in TEI's
format, `return_text` (`post_rerank`). Each document is one task, tokenized with the query, so the
documents are bounded in count (`prompt_size.MAX_INPUTS`), the query with each document must fit one
slot, and all of them together a few (`prompt_size.check_inputs`). `top_n` resizes the answer's list
unchecked (a negative one would ask for an enormous list), so it is held to 1 … the documents' count.
"""

from __future__ import annotations

from llama_direct.refusals import BAD_INPUT, RequestRefusal
from llama_direct.tokens import Grant
from llama_launcher.gate.bounds import BOUNDED, HARMLESS, forwarded, route_fields
from llama_launcher.gate.pinned import pinned_prompt
from llama_launcher.gate.prompt_size import MAX_INPUTS, check_inputs
from llama_launcher.gate.shaping import ShapingPolicy, encode_body, is_int, open_body

FIELDS = route_fields({
    "query": (BOUNDED, "a string, tokenized with each document: each pair within one slot"),
    "documents": (BOUNDED, "at most 64 strings, each with the query within one slot, all within 8"),
    "top_n": (BOUNDED, "resizes the answer unchecked in llama-server: 1 to the number of documents"),
    "return_documents": (HARMLESS, "a bool llama-server ignores (Jina's format)"),
})
"""Every field the route forwards; any other (TEI's `texts` and `return_text`) is dropped."""

ALLOWED = forwarded(FIELDS)


def shape_rerank_body(body: bytes, grant: Grant, policy: ShapingPolicy) -> bytes:
    """The rerank body to forward to `/v1/rerank`, or a `RequestRefusal`."""
    shaped = open_body(body, grant, policy, refused=frozenset(), allowed=ALLOWED)
    pinned_prompt(shaped, grant, None)  # no template renders this body: no pin can be put first
    query, documents = shaped.get("query"), shaped.get("documents")
    if not isinstance(query, str):
        raise RequestRefusal(BAD_INPUT, "query")
    if not (isinstance(documents, list) and 0 < len(documents) <= MAX_INPUTS
            and all(isinstance(document, str) for document in documents)):
        raise RequestRefusal(BAD_INPUT, "documents", limit=MAX_INPUTS)
    top_n = shaped.get("top_n")
    if top_n is None:
        shaped.pop("top_n", None)
    elif not (is_int(top_n) and 1 <= top_n <= len(documents)):
        raise RequestRefusal(BAD_INPUT, "top_n")
    check_inputs(documents, policy.context, prefix=query)
    return encode_body(shaped)
