"""How the broker answers: JSON and error bodies, the refusal handlers, and the envelope around every request."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.metrics import METRICS
from llama_direct.refusals import (
    INTERNAL_ERROR,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    REFUSED,
    FrameworkError,
    RateLimited,
    Reason,
    Refusal,
)

logger = logging.getLogger(__name__)


NO_STORE = {"Cache-Control": "no-store"}
JSON_TYPE = "application/json"


FRAMEWORK_ERRORS: dict[int, tuple[Reason, str | None]] = {404: (NOT_FOUND, "app"), 405: (METHOD_NOT_ALLOWED, None)}
"""The framework's own 404 and 405 (an unknown path or method) in the catalogue's words."""


def error_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
    """No error is worth caching: a refusal now may be an answer a moment later."""
    return Response(body, status_code=status, media_type=JSON_TYPE, headers={**NO_STORE, **(headers or {})})


class Envelope:
    """Outermost layer: `Referrer-Policy` on every answer, a generic 500 for anything unforeseen,
    and one structured log line per request with the path only, so a login token never reaches a log.
    """

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_policy(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"referrer-policy", b"no-referrer")]
            await send(message)

        try:
            await self.app(scope, receive, send_with_policy)
        except Exception as exc:
            logger.error("event=unhandled_error path=%s error=%s", scope["path"], type(exc).__name__)
            if status == 0:
                body = FrameworkError(INTERNAL_ERROR).to_body()
                await send_with_policy(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", JSON_TYPE.encode()), (b"content-length", b"%d" % len(body))],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            if self.access_log:
                # A success is DEBUG: the page polls, and an INFO line each time drowned the log.
                logger.log(
                    logging.INFO if status >= 400 else logging.DEBUG,
                    "event=request method=%s path=%s status=%d ms=%.2f",
                    scope["method"], scope["path"], status, (time.perf_counter() - started) * 1000,
                )


def refusal_response(refusal: Refusal) -> Response:
    """A refusal in the catalogue's words, with `Retry-After` when it is a rate limit; counted by code."""
    METRICS.refused(refusal.code)
    headers = {"Retry-After": str(refusal.retry_after)} if isinstance(refusal, RateLimited) else None
    return error_response(refusal.status, refusal.to_body(), headers)


def install_error_handlers(app: FastAPI) -> None:
    async def on_refusal(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refusal)
        return refusal_response(exc)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        reason, variant = FRAMEWORK_ERRORS.get(status, (REFUSED, None))
        return error_response(status, FrameworkError(reason, variant, status=status).to_body(), exc.headers)

    app.add_exception_handler(Refusal, on_refusal)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def json_response(value: Any, *, headers: dict[str, str] | None = None, status: int = 200) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type=JSON_TYPE, headers=headers)
