"""How far each loading model is: the router's `GET /models/sse`, followed only while a model loads.

llama-server's router (build 11434, `tools/server/server-models.cpp`) streams one `data:` line of
JSON per change, no `event:` field, no keep-alive, no replay of the state at connect:

    {"model": "beta", "event": "model_status",  "data": {"status": "loading"}}
    {"model": "beta", "event": "status_change", "data": {"status": "loading",
        "progress": {"stages": ["text_model"], "current": "text_model", "value": 0.0}}}
    ... "value": 1.0 ...
    {"model": "beta", "event": "status_change", "data": {"status": "loaded", "info": {...}}}
    {"model": "alpha", "event": "status_change", "data": {"status": "unloaded", "exit_code": 0}}

The child reports `value` (0..1) per stage (`text_model`, then `spec_model` and `mmproj_model` when
configured), at most every 200 ms, always the first and the last. The router's `/v1/models` does
not carry it, so this is the only source. The fraction kept is the whole load's:
`(index of current stage + value) / number of stages`. Nothing else of an event is kept (`info`
and `args` may hold file paths). A model's fraction is unknown until its first event after we
connected, and dropped when it leaves `loading`.

The stream is opened only while the gate's health lists a model `loading` (`watch`, called after
each `/v1/models` read), and closed once none is, so an idle router costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from llama_direct.llama_server import NotListening
from llama_launcher.gate.upstream import Upstream

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
RETRY_SECONDS = 1.0
"""A stream that failed or ended is not reopened sooner: a router without `/models/sse` costs one try a second."""
SSE_PATH = "/models/sse"


def load_fraction(data: str) -> tuple[str, float | None] | None:
    """One event's `data`: (model, whole-load fraction), (model, None) when it left `loading`, or None.

    None also for anything unusable (not JSON, no model, a loading event without a fraction), which
    leaves what is known as it was.
    """
    try:
        event = json.loads(data)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("model"), str):
        return None
    body = event.get("data")
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        return None
    if body["status"] != "loading":
        return event["model"], None
    progress = body.get("progress")
    if not isinstance(progress, dict):
        return None
    stages, current, value = progress.get("stages"), progress.get("current"), progress.get("value")
    if not isinstance(stages, list) or current not in stages or not isinstance(value, int | float) \
            or isinstance(value, bool) or not math.isfinite(value):
        return None
    fraction = (stages.index(current) + min(max(float(value), 0.0), 1.0)) / len(stages)
    return event["model"], fraction


class LoadProgress:
    """The fractions of the models loading now, from the router's `/models/sse` (see the module doc)."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._fractions: dict[str, float] = {}
        self._loading: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None
        self._ended_at = -math.inf

    def of(self, model: str) -> dict[str, Any]:
        """`{"progress": fraction}` for a model loading whose fraction is known, else `{}`."""
        fraction = self._fractions.get(model)
        return {} if fraction is None else {"progress": round(fraction, 3)}

    def watch(self, loading: Iterable[str]) -> None:
        """The models loading now: follow the stream while there is one, close it when there is none."""
        self._loading = frozenset(loading)
        for name in list(self._fractions):
            if name not in self._loading:
                del self._fractions[name]
        running = self._task is not None and not self._task.done()
        if not self._loading:
            if running and self._task is not None:
                self._task.cancel()
            return
        if not running and time.monotonic() - self._ended_at >= RETRY_SECONDS:
            self._task = asyncio.ensure_future(self._follow())

    def _apply(self, data: str) -> None:
        found = load_fraction(data)
        if found is None:
            return
        model, fraction = found
        if fraction is None:
            self._fractions.pop(model, None)
        elif model in self._loading:
            self._fractions[model] = fraction

    async def _follow(self) -> None:
        try:
            address, authorization = self.upstream.address, self.upstream.authorization()
        except NotListening:
            self._ended_at = time.monotonic()
            return
        url, transport = _endpoint(address, self.upstream.ssl)
        headers = {"Host": self.upstream.host_header.decode("ascii")}
        if authorization:
            headers["Authorization"] = authorization.decode("ascii")
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=None)
        try:
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as client, \
                    aconnect_sse(client, "GET", url + SSE_PATH, headers=headers) as source:
                if source.response.status_code != 200:
                    logger.info("event=load_progress_unavailable status=%d", source.response.status_code)
                    return
                async for event in source.aiter_sse():
                    self._apply(event.data)
        except (httpx.HTTPError, SSEError) as error:
            logger.info("event=load_progress_ended error=%s", type(error).__name__)
        finally:
            self._ended_at = time.monotonic()
            self._fractions.clear()


def _endpoint(address: str | tuple[str, int], context: ssl.SSLContext | None) -> tuple[str, httpx.AsyncHTTPTransport]:
    """The base URL and transport for llama-server's address: a unix socket, or host and port."""
    if isinstance(address, str):
        return "http://llama-server", httpx.AsyncHTTPTransport(uds=address)
    host, port = address
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if context is not None else "http"
    return f"{scheme}://{host}:{port}", httpx.AsyncHTTPTransport(verify=context if context is not None else True)
