"""The peer: a Studio-style app proxy, FastAPI plus httpx, re-yielding each SSE line in its event loop.

This is how an app typically relays llama-server today (Unsloth Studio among them): the request
is read by the app, sent upstream with the key by an `httpx.AsyncClient`, and every line of the
event stream is iterated in Python and yielded again through a `StreamingResponse`. Every token
thus costs the app's event loop several Python steps and a re-chunk. Served by uvicorn (uvloop,
httptools), in its own process. Upstream connections are not kept alive, as for the gate, since
llama-server drops a kept-alive connection after a long stream.

Run as `python -m llama_launcher.bench.studio_proxy --fd N --upstream PATH`; the key is read
from the environment (`BENCH_UPSTREAM_KEY`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


def create_app(upstream_socket: str, key: str) -> FastAPI:
    app = FastAPI()
    client = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=upstream_socket),
        base_url="http://llama-server",
        timeout=httpx.Timeout(600.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    )
    headers = {"Authorization": f"Bearer {key}"}

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        payload = await request.json()
        upstream = await client.send(
            client.build_request("POST", "/v1/chat/completions", json=payload, headers=headers), stream=True
        )

        async def lines() -> AsyncIterator[str]:
            try:
                async for line in upstream.aiter_lines():
                    if line:
                        yield line + "\n\n"
            finally:
                await upstream.aclose()

        return StreamingResponse(lines(), status_code=upstream.status_code, media_type="text/event-stream")

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m llama_launcher.bench.studio_proxy", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="an inherited listening socket")
    parser.add_argument("--upstream", required=True, help="the upstream's unix socket")
    args = parser.parse_args(argv)
    from llama_launcher.bench.processes import raise_fd_limit, take_upstream_key

    key = take_upstream_key("studio_proxy")
    if key is None:
        return 2
    raise_fd_limit()
    uvicorn.run(
        create_app(args.upstream, key), fd=args.fd, loop="uvloop", http="httptools", access_log=False,
        log_level="warning", backlog=4096,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
