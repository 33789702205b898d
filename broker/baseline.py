"""The baseline: a chat sent through the broker and the gate's private socket, for comparison and fallback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from broker.core import BrokerCore
from broker.responses import (
    JSON_TYPE,
)
from llama_direct.lanes import CHAT_ROUTE, LANE_PREFIX
from llama_direct.refusals import (
    GateUnavailable,
)
from llama_direct.tokens import Grant, mint

logger = logging.getLogger(__name__)


async def baseline(core: BrokerCore, user: str, body: bytes, content_type: str | None) -> Response:
    """The fallback: the same request through the gate's private side, with a token minted for it."""
    now = core.clock()
    issuer = core.issuer()
    minted = mint(
        issuer.key,
        issuer=issuer.issuer,
        audience=issuer.audience,
        subject=user,
        scope="chat",
        grant=Grant(routes=(CHAT_ROUTE,), model=core.settings.model, max_tokens=core.settings.max_tokens_cap),
        now=core.mint_time(user, now),
        ttl=core.settings.token_ttl,
    )
    client = core.gate.client
    request = client.build_request(
        "POST",
        LANE_PREFIX + CHAT_ROUTE[1],
        content=body,
        headers={"authorization": f"Bearer {minted.token}", "content-type": content_type or JSON_TYPE},
    )
    try:
        upstream = await client.send(request, stream=True)
    except httpx.HTTPError:
        raise GateUnavailable() from None
    headers = {"Cache-Control": "no-store"}
    upstream_type = upstream.headers.get("content-type")
    if upstream_type:
        headers["Content-Type"] = upstream_type
    return _RelayResponse(upstream, headers)


class _RelayResponse(StreamingResponse):
    """The gate's bytes as they come. The upstream is closed when this answer ends however it ends,
    outside the cancelled scope of a client that left, so the gate sees the disconnect at once.
    """

    def __init__(self, upstream: httpx.Response, headers: dict[str, str]) -> None:
        super().__init__(_relay(upstream), status_code=upstream.status_code, headers=headers)
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._upstream.aclose()


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """A cut upstream ends the stream, as a cut lane would: the client sees it end early."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        logger.warning("event=baseline_cut status=%d", upstream.status_code)
