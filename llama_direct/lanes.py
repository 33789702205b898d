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

Scope = Literal["chat", "resume", "cancel", "responses", "messages", "completions", "embeddings", "rerank", "tokens"]
"""What a token may do: generate in one API's format, resume or cancel a stream, embed, rerank, or
count a prompt's tokens (`tokens`, for the three counting routes)."""
BodyFormat = Literal[
    "chat", "chat_count", "responses", "responses_count", "messages", "messages_count", "completions", "embeddings",
    "rerank",
]
"""A JSON body the gate shapes; each names one shaper (`llama_launcher.gate.shapers.SHAPERS`). A
`*_count` format is its generation format with no length: llama-server only counts its prompt."""
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
    budget_fields: tuple[str, ...] = ()
    """Nested fields (dotted paths) llama-server reads as a share of the generation's length, each held
    to the grant's `max_tokens` as the length fields are: Messages' `thinking.budget_tokens`."""
    unproxied: str = ""
    """Why HAProxy in the gate's place cannot check this route; empty when it can. `llama-direct
    haproxy-config` refuses to render a config that serves such a route (docs/fleet.md)."""

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
_HELD_STREAM = ("its conv_id query must be the grant's conversation, and it must reach the llama-server "
                "that holds the stream; HAProxy's lane rules check no query and pick a server by load")
RESUME = LaneRoute(name="resume", method="GET", path="/v1/stream", scope="resume", body=None,
                   conversation="resumes", query=("conv_id", "from"), unproxied=_HELD_STREAM)
CANCEL = LaneRoute(name="cancel", method="DELETE", path="/v1/stream", scope="cancel", body=None,
                   conversation="stops", query=("conv_id",), unproxied=_HELD_STREAM)

RESPONSES = LaneRoute(
    name="responses", method="POST", path="/v1/responses", scope="responses", body="responses",
    conversation="opens", length_fields=("max_output_tokens",),
)
"""OpenAI Responses. llama-server converts it to a chat request and streams it through the same
resumable stream as chat (`handle_completions_impl`), so it may open a conversation."""
MESSAGES = LaneRoute(
    name="messages", method="POST", path="/v1/messages", scope="messages", body="messages",
    conversation="opens", length_fields=("max_tokens",), budget_fields=("thinking.budget_tokens",),
)
"""Anthropic Messages: converted to chat by llama-server, resumable as chat is."""
COMPLETIONS = LaneRoute(
    name="completions", method="POST", path="/v1/completions", scope="completions", body="completions",
    conversation="opens", length_fields=("max_tokens", "n_predict"),
)
"""OpenAI completions: a raw prompt, no template; resumable as chat is."""
EMBEDDINGS = LaneRoute(name="embeddings", method="POST", path="/v1/embeddings", scope="embeddings",
                       body="embeddings", conversation=None)
"""Answered only by a model started with `--embeddings` (501 otherwise); one JSON answer, no stream."""
RERANK = LaneRoute(name="rerank", method="POST", path="/v1/rerank", scope="rerank", body="rerank",
                   conversation=None)
"""Answered only by a model started with `--reranking`."""
CHAT_INPUT_TOKENS = LaneRoute(name="chat_input_tokens", method="POST", path="/v1/chat/completions/input_tokens",
                              scope="tokens", body="chat_count", conversation=None)
RESPONSES_INPUT_TOKENS = LaneRoute(name="responses_input_tokens", method="POST", path="/v1/responses/input_tokens",
                                   scope="tokens", body="responses_count", conversation=None)
MESSAGES_COUNT_TOKENS = LaneRoute(name="messages_count_tokens", method="POST", path="/v1/messages/count_tokens",
                                  scope="tokens", body="messages_count", conversation=None)
"""The three token-counting routes: the prompt of a generation request is rendered and tokenized,
nothing is generated, so they take no length."""

LANE_ROUTES: tuple[LaneRoute, ...] = (
    CHAT, RESUME, CANCEL, RESPONSES, MESSAGES, COMPLETIONS, EMBEDDINGS, RERANK, CHAT_INPUT_TOKENS,
    RESPONSES_INPUT_TOKENS, MESSAGES_COUNT_TOKENS,
)
"""Every lane route; add one here (and a shaper, for a new body format)."""

ROUTES: Mapping[str, LaneRoute] = {route.name: route for route in LANE_ROUTES}
ROUTE_AT: Mapping[tuple[str, str], LaneRoute] = {route.key: route for route in LANE_ROUTES}
"""(METHOD, path under the lane) -> its entry."""
LANE_PATHS = frozenset(route.path for route in LANE_ROUTES)
SCOPES: tuple[Scope, ...] = tuple(dict.fromkeys(route.scope for route in LANE_ROUTES))

CHAT_PATH = CHAT.path
"""Also the broker's baseline route: the fallback takes the same body at the same path off the lane."""
CHAT_ROUTE = CHAT.key

NEVER_ROUTED = frozenset({
    "/v1/streams/lookup", "/tools", "/cors-proxy", "/slots", "/lora-adapters", "/props", "/metrics", "/models",
})
"""llama-server routes no grant reaches, whatever it names, and no registry entry may take (a unit test
holds it): the other users' conversations, built-in tools that read and write files, a proxy that
fetches any URL, slot save and restore, every user's adapters, server settings, metrics, and the
router's model management. Each path also covers everything below it (`/slots/0`, `/models/load`)."""


_BELOW_NEVER_ROUTED = tuple(sorted(root + "/" for root in NEVER_ROUTED))


def never_routed(path: str) -> bool:
    """Whether `path` (under the lane) is one of `NEVER_ROUTED` or below one (one set lookup and one
    `startswith` of a tuple: it runs twice on every lane request)."""
    return path in NEVER_ROUTED or path.startswith(_BELOW_NEVER_ROUTED)

NEGOTIATION_PATH = "/direct-stream"
"""The broker's route that hands out a lane token (and says when the lane is off)."""
WHOAMI_PATH = "/v1/me"
"""`GET`: who is logged in (`llama_direct.documents.WhoAmI`), for the page to show."""
MODEL_UNLOAD_PATH = "/v1/models/unload"
"""`POST {"model": NAME}` (`llama_direct.control.unload_request`): the owner unloads a router's model (the
standalone broker only). An unload ends every user's replies from that model, so only the owner may, and
`GET /v1/models` says `can_unload` to whoever may; the browser never reaches llama-server's `/models/*`."""
UNUSED_GRANT_HEADER = "X-Unused-Grant"
"""On a baseline request: the token of the lane grant its client could not use (the lane request failed
before a response head). The baseline then serves under that grant, its reservation and its user's
stream, instead of reserving another: a user at their `--streams` is not refused the fallback for the
grant they just gave up (`broker.handover`)."""
