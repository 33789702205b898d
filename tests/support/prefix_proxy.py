"""A path-prefixing reverse proxy for tests: serves ``/PREFIX/...`` by forwarding ``/...`` to a target port.

It stands in for nginx's ``location /llm/ { proxy_pass http://127.0.0.1:8000/; }``, streaming the
answer back chunk by chunk, so a test can check ``--public-url`` end to end.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


class PrefixProxy:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.target_port = 0
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _proxy(self, request: Request) -> Response:
        path = request.url.path
        if not path.startswith(self.prefix + "/"):
            return Response("not under the prefix", status_code=404)
        client = httpx.AsyncClient(timeout=60)
        upstream = client.build_request(
            request.method,
            f"http://127.0.0.1:{self.target_port}{path[len(self.prefix):]}",
            params=request.query_params,
            headers=[(k, v) for k, v in request.headers.items() if k.lower() not in HOP],
            content=await request.body(),
        )
        response = await client.send(upstream, stream=True)

        async def close() -> None:
            await response.aclose()
            await client.aclose()

        headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP}
        return StreamingResponse(response.aiter_raw(), status_code=response.status_code, headers=headers,
                                 background=BackgroundTask(close))

    def _run(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self._proxy, methods=["GET", "POST", "DELETE", "OPTIONS"])])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def __enter__(self) -> PrefixProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._server:
            self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
