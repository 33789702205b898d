"""The direct lane's routes and the scope each needs: the one list the broker grants from and the gate checks.

A route is (METHOD, path under the lane). The broker puts routes in a grant; the gate serves only a
route that is both here and in the grant, so adding a lane route starts (and ends) here.
`/v1/streams/lookup` would list other users' conversations, so it is never routable, whatever a
grant says.
"""

from __future__ import annotations

from typing import Literal

LANE_PREFIX = "/direct"
"""Where the lane sits on the public port: `/direct/v1/chat/completions`."""

Scope = Literal["chat", "resume", "cancel"]
SCOPES: tuple[Scope, ...] = ("chat", "resume", "cancel")

CHAT_PATH = "/v1/chat/completions"
STREAM_PATH = "/v1/stream"
"""llama-server's resumable-stream route: GET resumes, DELETE cancels."""

CHAT_ROUTE = ("POST", CHAT_PATH)
RESUME_ROUTE = ("GET", STREAM_PATH)
CANCEL_ROUTE = ("DELETE", STREAM_PATH)

LANE_ROUTES: dict[tuple[str, str], Scope] = {
    CHAT_ROUTE: "chat",
    RESUME_ROUTE: "resume",
    CANCEL_ROUTE: "cancel",
}
"""(method, path under the lane) -> the RFC 8693 scope a token needs for it."""

ROUTE_FOR_SCOPE: dict[Scope, tuple[str, str]] = {scope: route for route, scope in LANE_ROUTES.items()}

NEVER_ROUTED = frozenset({"/v1/streams/lookup"})

NEGOTIATION_PATH = "/direct-stream"
"""The broker's route that hands out a lane token (and says when the lane is off)."""
