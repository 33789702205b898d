"""Request bodies read with a bound, so that no route of the broker's holds more than it needs in memory."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request

from llama_direct.refusals import BODY_TOO_LARGE, Reason, RequestRefusal

MAX_CHAT_BODY_BYTES = 32 * 1024 * 1024
"""Images arrive inline as base64; the gate applies the real limit, this one only bounds memory here."""
MAX_SMALL_BODY_BYTES = 64 * 1024

T = TypeVar("T")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it (or its declared length) passes `limit`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestRefusal(BODY_TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRefusal(BODY_TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


def parsed(body: bytes, parse: Callable[[object], T | None], refusal: Reason) -> T:
    """What `parse` makes of the body's JSON, or 400 `refusal` when the body is not JSON or `parse`
    finds it is not the document it reads (and returns None)."""
    try:
        found = parse(json.loads(body))
    except (ValueError, RecursionError):
        found = None
    if found is None:
        raise RequestRefusal(refusal)
    return found


async def read_document(request: Request, parse: Callable[[object], T | None], refusal: Reason,
                        limit: int = MAX_SMALL_BODY_BYTES) -> T:
    """One JSON document the route reads (`parsed`), its body read with `read_body`'s bound."""
    return parsed(await read_body(request, limit), parse, refusal)
