"""The wire documents the pieces exchange, each typed once here for every side that writes or reads it.

- `NegotiationAnswer`: the broker's `/direct-stream` answer (`Granted` or `Unsupported`), written by
  `broker.negotiation` and read by the clients: `parse_negotiation` in Python (`sdk`), its
  TypeScript twin in `frontend/src/negotiation.ts`, over the interfaces `scripts/documents_ts.py`
  writes from these definitions into `frontend/src/documents.ts` (`tests/unit/test_documents_ts.py`
  holds them equal).
- `HealthAnswer`: the gate's private `GET /health`, written by the gate (`gate.health`, and
  `gate.pool.merge_snapshots` for several upstreams) and read by the broker (`broker.gate_health`)
  through `parse_health`, which refuses an answer of another shape (`typed_json.MalformedDocument`).
- `ModelList`: `GET /v1/models`, OpenAI's list shape with each model's state (`broker.models`).
- `MyUsage`: `GET /v1/usage`, a logged-in user's own usage and what their budget has left
  (`broker.budget.my_usage`), read by the page (`frontend/src/page/usage.ts`).

TypedDicts, not classes: each is JSON as it crosses, so a writer builds the dict and the type checker
holds its keys and values to the definition; a reader of untrusted bytes goes through its parser
(`llama_direct.typed_json` checks a document against its definition).
Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NotRequired, TypedDict

from llama_direct.model_states import MODEL_STATES
from llama_direct.typed_json import MalformedDocument, parse_document


class ModelEntry(TypedDict):
    """One model as a gate or a broker lists it: never a path."""

    id: str
    status: str
    """`unloaded`, `loading` or `loaded` (`llama_direct.model_states.MODEL_STATES`)."""
    vision: bool
    progress: NotRequired[float]
    """How much of a loading model's load is done (0..1), where the router reported it."""
    tools: NotRequired[bool]
    """Present (true) where the model's chat template takes tools (llama-server's `/props`,
    `chat_template_caps.supports_tools`, a router's model's own once it was loaded); absent where it does
    not or nobody knows (a router's model never loaded yet: asking its `/props` would load it)."""


class HealthSlots(TypedDict):
    total: int | None
    busy: int | None


class UpstreamHealth(TypedDict):
    """One upstream behind a gate of several, without its address."""

    ready: bool
    models: list[str]
    in_flight: int


class HealthAnswer(TypedDict):
    """The gate's private `GET /health`; `slots` are null behind a router."""

    gate: Literal["ok"]
    model_ready: bool
    model: str
    vision: bool
    slots: HealthSlots
    router: bool
    models: list[ModelEntry]
    upstreams: NotRequired[list[UpstreamHealth]]
    not_issued_before: NotRequired[int]
    """The gate's start cut-off, without Redis: the broker mints no `iat` earlier."""
    jwks: NotRequired[list[dict[str, object]]]
    """Other brokers' JWKS sources: host, key count and age, never a URL's path."""


def parse_health(body: bytes) -> HealthAnswer:
    """The broker's reading of the gate's `/health` body: every field of its declared type, each model's
    `status` one of `MODEL_STATES` and a `progress` within 0..1; else `MalformedDocument` naming the
    first field that is wrong."""
    answer = parse_document(body, HealthAnswer, name="health")
    for index, model in enumerate(answer["models"]):
        if model["status"] not in MODEL_STATES:
            raise MalformedDocument(f"health: models[{index}].status must be one of {', '.join(MODEL_STATES)}")
        if not 0.0 <= model.get("progress", 0.0) <= 1.0:
            raise MalformedDocument(f"health: models[{index}].progress must be between 0 and 1")
    return answer


class ListedModel(ModelEntry):
    """One model in `GET /v1/models`: OpenAI's fields, then its state."""

    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(TypedDict):
    """`GET /v1/models` on the broker."""

    object: Literal["list"]
    data: list[ListedModel]
    can_unload: NotRequired[bool]
    """Present (true) where the caller may unload a loaded model (`llama_direct.lanes.MODEL_UNLOAD_PATH`):
    the owner, behind a router."""


class WhoAmI(TypedDict):
    """`GET /v1/me` (`llama_direct.lanes.WHOAMI_PATH`): who is logged in, for the page to show; never a secret."""

    sub: str
    """The grants' `sub`: `"local"` for the owner, a named user's stable id, or a host app's user."""
    name: str | None
    """A named user's name (`llama-direct users`); None for the owner and a host app's users."""
    owner: bool


class LedgerDay(TypedDict):
    """One row of a user's usage ledger: their requests on one model, route and lane in one UTC day."""

    day: str
    """The UTC date, `YYYY-MM-DD`."""
    model: str
    route: str
    lane: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    unseen: int
    """Requests whose end the gate did not see, each counted at its whole reservation."""


class MyUsage(TypedDict):
    """`GET /v1/usage` (`llama_direct.budgets.MY_USAGE_PATH`): the caller's own windows now and ledger rows."""

    sub: str
    name: str | None
    tokens_per_day: int | None
    """The caller's limits (`llama-direct users`); None: no bound (always for the owner)."""
    tokens_per_minute: int | None
    day_used: int
    """Generated tokens charged to today (UTC), settled and still reserved by open grants."""
    day_left: int | None
    """What today's budget has left; None: no daily bound."""
    minute_used: int
    minute_left: int | None
    since: str
    """The first UTC day of `rows` (`?since=YYYY-MM-DD`, today by default)."""
    rows: list[LedgerDay]


class Granted(TypedDict):
    """A supported negotiation: the lane's base, the token and what it grants."""

    supported: Literal[True]
    route: str
    """The lane route granted, by its registry name (`llama_direct.lanes.ROUTES`)."""
    url: str
    """The lane's base, without a trailing slash: a client appends the route's path."""
    token: str
    expires_at: int
    ttl_seconds: int
    model: str
    conversation_id: str | None
    scope: str
    grant: dict[str, Any]
    fallback_url: str


class Unsupported(TypedDict):
    """The lane cannot serve now: the client sends the same request to `fallback_url`."""

    supported: Literal[False]
    route: str
    """The lane route asked for, which `fallback_url` serves off the lane."""
    reason: str
    """`disabled`, `gate_down` or `model_loading`."""
    message: str
    fallback_url: str


NegotiationAnswer = Granted | Unsupported


def parse_negotiation(body: bytes) -> NegotiationAnswer | None:
    """A client's reading of a 200 answer: the grant when it has what a lane request needs (a string
    `url` and `token`), else the unsupported answer (its `fallback_url` only when it is a string);
    None for a body that is not a JSON object. The `url` comes back without a trailing slash."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict):
        return None
    fallback = raw.get("fallback_url")
    fallback_url = fallback if isinstance(fallback, str) else ""
    url, token = raw.get("url"), raw.get("token")
    if raw.get("supported") is True and isinstance(url, str) and isinstance(token, str):
        conversation = raw.get("conversation_id")
        grant = raw.get("grant")
        return Granted(
            supported=True, route=_str(raw.get("route")), url=url.rstrip("/"), token=token,
            expires_at=_int(raw.get("expires_at")), ttl_seconds=_int(raw.get("ttl_seconds")),
            model=_str(raw.get("model")), conversation_id=conversation if isinstance(conversation, str) else None,
            scope=_str(raw.get("scope")), grant=grant if isinstance(grant, dict) else {}, fallback_url=fallback_url,
        )
    return Unsupported(supported=False, route=_str(raw.get("route")), reason=_str(raw.get("reason")),
                       message=_str(raw.get("message")), fallback_url=fallback_url)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""
