"""The direct lane's routes: one registry the broker grants from, the gate checks and dispatches from,
the HAProxy renderer renders from, and the TypeScript clients read (`frontend/src/lanes.ts`, written
from this list by `scripts/lanes_ts.py` and held equal to it by `tests/unit/test_lanes_ts.py`).

A route is one `LaneRoute` entry: its method and path under the lane, the RFC 8693 scope a token
needs for it, the body format it takes (which names the gate's shaper for it,
`llama_launcher.gate.shapers.SHAPERS`), what it does with a conversation, and the body field that
carries the grant's length cap. So a route's name is never tested as a string anywhere: code asks
the entry (`route.body is not None`, `route.opens_conversation`), and a new route is an entry here
plus a shaper for a new body format. The broker puts routes in a grant; the gate serves only a route
that is both here and in the grant. `/v1/streams/lookup` would list other users' conversations, so
it is never routable, whatever a grant says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

LANE_PREFIX = "/direct"
"""Where the lane sits on the public port: `/direct/v1/chat/completions`."""

Scope = Literal["chat", "resume", "cancel"]
BodyFormat = Literal["chat"]
"""A JSON body the gate shapes; each names one shaper (`llama_launcher.gate.shapers.SHAPERS`)."""
Conversation = Literal["opens", "resumes", "stops"]
"""What a route does with a conversation id: a generation may open one (the grant names it, the
request must carry it as `X-Conversation-Id`), a resume reads its stream, a cancel stops it; the
last two name it as `conv_id` in the query and go to the upstream that holds it."""


@dataclass(frozen=True)
class LaneRoute:
    """One lane route, and everything the broker, the gate, HAProxy and the clients need to know of it."""

    name: str
    """What negotiation and the clients call it."""
    method: str
    path: str
    """Under the lane prefix, as llama-server serves it."""
    scope: Scope
    body: BodyFormat | None
    """The body format it takes, which picks its shaper; None: it takes no body."""
    conversation: Conversation | None
    """None: the route never touches a conversation (an `X-Conversation-Id` is refused)."""
    length_fields: tuple[str, ...] = ()
    """Every body field llama-server reads as a generation length, each held to the grant's
    `max_tokens`; the first is the cap's own name in this format (`length_cap`)."""
    query: tuple[str, ...] = ()
    """The query parameters it takes (a conversation route's `conv_id` first); any other is refused."""

    @property
    def key(self) -> tuple[str, str]:
        """(METHOD, path), as a grant's `routes` names it."""
        return (self.method, self.path)

    @property
    def length_cap(self) -> str | None:
        """The body field the gate sets to the cap when the request names no length."""
        return self.length_fields[0] if self.length_fields else None

    @property
    def opens_conversation(self) -> bool:
        return self.conversation == "opens"

    @property
    def continues_conversation(self) -> bool:
        """A resume or a cancel: it names an existing conversation, and its holder serves it."""
        return self.conversation in ("resumes", "stops")


CHAT = LaneRoute(
    name="chat", method="POST", path="/v1/chat/completions", scope="chat", body="chat", conversation="opens",
    length_fields=("max_tokens", "max_completion_tokens", "n_predict"),
)
RESUME = LaneRoute(name="resume", method="GET", path="/v1/stream", scope="resume", body=None,
                   conversation="resumes", query=("conv_id", "from"))
CANCEL = LaneRoute(name="cancel", method="DELETE", path="/v1/stream", scope="cancel", body=None,
                   conversation="stops", query=("conv_id",))

LANE_ROUTES: tuple[LaneRoute, ...] = (CHAT, RESUME, CANCEL)
"""Every lane route; add one here (and a shaper, for a new body format)."""

ROUTES: Mapping[str, LaneRoute] = {route.name: route for route in LANE_ROUTES}
ROUTE_AT: Mapping[tuple[str, str], LaneRoute] = {route.key: route for route in LANE_ROUTES}
"""(METHOD, path under the lane) -> its entry."""
LANE_PATHS = frozenset(route.path for route in LANE_ROUTES)
SCOPES: tuple[Scope, ...] = tuple(dict.fromkeys(route.scope for route in LANE_ROUTES))

CHAT_PATH = CHAT.path
"""Also the broker's baseline route: the fallback takes the same body at the same path off the lane."""
CHAT_ROUTE = CHAT.key

NEVER_ROUTED = frozenset({"/v1/streams/lookup"})

NEGOTIATION_PATH = "/direct-stream"
"""The broker's route that hands out a lane token (and says when the lane is off)."""
