"""The requests the gate sends on: built from scratch for llama-server, rebuilt for the broker.

Nothing of a lane request's head travels to llama-server but the route; a broker request keeps the
client's end-to-end headers, minus any forwarding header the client wrote, plus the gate's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_direct.header_users import FORWARDED_USER_HEADER
from llama_direct.llama_server import NotListening
from llama_direct.refusals import UpstreamUnavailable
from llama_launcher.gate.http1 import FORWARDING, Header, end_to_end, request_head
from llama_launcher.gate.request_reader import Request
from llama_launcher.gate.scope import Route
from llama_launcher.gate.upstream import Upstream

_FORWARDED_USER = FORWARDED_USER_HEADER.encode("ascii")


def lane_request(upstream: Upstream, route: Route, target: str, body: bytes) -> bytes:
    """llama-server's request, built from scratch: nothing of the client's head travels but the route
    (`target`: the route's upstream target, with `?autoload=false` for a grant that may not load)."""
    try:
        authorization = upstream.authorization()
    except NotListening:
        raise UpstreamUnavailable() from None
    headers: list[Header] = [(b"Host", upstream.host_header)]
    if authorization:  # an attached llama-server may run without a key
        headers.append((b"Authorization", authorization))
    if route.lane.body is not None:
        headers.append((b"Content-Type", b"application/json"))
    if route.lane.opens_conversation and route.conversation_id is not None:
        headers.append((b"X-Conversation-Id", route.conversation_id.encode("ascii")))
    if body or route.method == "POST":
        headers.append((b"Content-Length", str(len(body)).encode()))
    headers.append((b"Connection", b"close"))
    return request_head(route.method.encode("ascii"), target.encode("ascii"), headers)


def broker_request(
    request: Request, *, client: str | None, proto: bytes, length: int | None, chunked: bool = False,
    user_header: bytes | None = None, user: Sequence[bytes] = (),
) -> bytes:
    """The client's request as the broker receives it: its own headers, plus forwarding ones.

    `length` is the body's (None: none is sent); `chunked`: the body is still arriving, unsized, and
    is relayed chunk by chunk as it comes. `user_header` (`--trusted-user-header`) and the broker's
    `FORWARDED_USER_HEADER` are dropped whoever sent them; `user` (`admission.forwarded_user`: a trusted
    proxy's values of `user_header`) goes on under `FORWARDED_USER_HEADER`, the one the broker reads.
    """
    dropped = FORWARDING | {b"content-length", b"expect", b"transfer-encoding", _FORWARDED_USER}
    if user_header is not None:
        dropped |= {user_header}
    headers = [(n, v) for n, v in end_to_end(request.raw_headers) if n.lower() not in dropped]
    headers.extend((_FORWARDED_USER, value) for value in user)
    if client is not None:
        headers.append((b"X-Forwarded-For", client.encode("ascii")))
    headers.append((b"X-Forwarded-Proto", proto))
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif length or (length is not None and request.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS")):
        headers.append((b"Content-Length", str(length).encode()))
    headers.append((b"Connection", b"close"))
    return request_head(request.method, request.target, headers)
