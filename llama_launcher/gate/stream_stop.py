"""Stop a resumable stream on the llama-server that runs it: `DELETE /v1/stream?conv_id=ID`, with the key.

A single llama-server cancels the generation and drops its buffer. A router (build 11434) forwards
that `DELETE` to the child that runs the model, but without the key (`router_stream_delete` in
`tools/server/server-models.cpp` builds a bare `httplib::Client`), so the child answers 401 and
goes on generating: a router-mode Stop stopped nothing (issue 25: 11.7 CPU-seconds in the 15 s
after Stop). So behind a router the gate also sends the `DELETE` to each loaded child itself, with
the master key the child inherited: the router's `/v1/models` lists each child's argv, whose
`--port` is the loopback port the child listens on. The router's own `DELETE` still goes first: it
forgets the conversation, and cancels a request still waiting for its model's load.

A child listens on 127.0.0.1 of the router's machine, so this reaches it only where the router
does too: a router the gate launched (a unix socket) or one attached on a loopback address. For a
router attached across the network, a Stop reaches the router alone (said in docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import ssl
import urllib.parse
from dataclasses import dataclass

from llama_direct.refusals import Refusal
from llama_launcher.gate.upstream import Upstream, get_json, send_request

log = logging.getLogger(__name__)

STOP_TIMEOUT = 2.0
CHILD_HOST = "127.0.0.1"
"""Where a router's children listen (`CHILD_ADDR` in server-models.cpp)."""


def stream_path(conversation: str) -> str:
    return "/v1/stream?conv_id=" + urllib.parse.quote(conversation, safe="")


def child_ports(listing: object) -> list[int]:
    """The `--port` of each loaded model's child in a router's `/v1/models` (pure)."""
    ports = []
    data = listing.get("data") if isinstance(listing, dict) else None
    for item in data if isinstance(data, list) else []:
        status = item.get("status") if isinstance(item, dict) else None
        if not isinstance(status, dict) or status.get("value") != "loaded" or not isinstance(status.get("args"), list):
            continue
        args = status["args"]
        for flag, value in itertools.pairwise(args):
            if flag == "--port" and isinstance(value, str) and value.isdigit() and 0 < int(value) < 65536:
                ports.append(int(value))
    return ports


def reaches_children(upstream: Upstream) -> bool:
    """Whether the router's loopback children are this machine's: a unix socket or a loopback host."""
    address = upstream.address
    if isinstance(address, str):
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(address[0]).is_loopback
    return address[0] == "localhost"


@dataclass(frozen=True)
class Child:
    """A router's child as the gate's `Upstream`: its loopback port, and the router's key."""

    parent: Upstream
    port: int
    ssl: ssl.SSLContext | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (CHILD_HOST, self.port)

    @property
    def host_header(self) -> bytes:
        return f"{CHILD_HOST}:{self.port}".encode("ascii")

    def authorization(self) -> bytes:
        return self.parent.authorization()

    def is_ready(self) -> bool:
        return True


async def stop_stream(upstream: Upstream, conversation: str, *, router: bool) -> None:
    """Cancel `conversation` where it runs; every failure is logged and swallowed (best effort: the
    stream may be gone already, and its own end frees the slot as well)."""
    path = stream_path(conversation)
    try:
        await send_request(upstream, "DELETE", path, timeout=STOP_TIMEOUT)
    except Refusal as refusal:
        log.info("stream stop not delivered: %s", refusal.code)
    if router and reaches_children(upstream):
        await stop_on_children(upstream, path)


async def stop_on_children(router: Upstream, path: str) -> None:
    """The `DELETE` to every loaded child of `router` (a conversation lives on one; the rest answer 204)."""
    try:
        status, listing = await get_json(router, "/v1/models", timeout=STOP_TIMEOUT)
    except Refusal as refusal:
        log.info("stream stop: the router's models not read: %s", refusal.code)
        return
    ports = child_ports(listing) if status == 200 else []
    results = await asyncio.gather(
        *(send_request(Child(router, port), "DELETE", path, timeout=STOP_TIMEOUT) for port in ports),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, Refusal):
            log.info("stream stop on a child not delivered: %s", result.code)
        elif isinstance(result, BaseException):
            raise result
