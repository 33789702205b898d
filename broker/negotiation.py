"""`/direct-stream`: from what a client asks, the server's policy and the gate's health, to an answer.

Pure: no I/O and no clock. The app hands in the gate's last health answer, the signing key and
`now`, so that a negotiation costs one signature and nothing else on its hot path.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.models import ModelInfo, allowed_models, choose_model
from llama_direct.lanes import CANCEL, CHAT, CHAT_PATH, LANE_PREFIX, RESUME
from llama_direct.refusals import (
    BAD_HOST,
    CONFLICTING_OPTIONS,
    CONVERSATION_NOT_OWNED,
    INVALID_OPTION,
    INVALID_OPTIONS,
    UNKNOWN_OPTION,
    RequestRefusal,
    UnknownModel,
)
from llama_direct.tokens import Grant, mint

if TYPE_CHECKING:
    from broker.settings import BrokerSettings
    from broker.signing_keys import SigningKey

FALLBACK_PATH = CHAT_PATH
MAX_BODY_BYTES = 4096
MAX_CONVERSATION_ID_LENGTH = 128
CONVERSATION_TTL_SECONDS = 3600
"""How long a resumable conversation may be resumed or cancelled by its owner."""
MAX_CONVERSATIONS = 10_000

_OPTIONS = frozenset({"max_tokens", "resumable", "resume", "cancel", "model", "autoload"})
_QUERY_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_HOST = re.compile(r"(?:[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]+")

UNSUPPORTED_MESSAGES = {
    "disabled": "The direct lane is turned off on this server.",
    "gate_down": "The gate is not answering right now.",
    "model_loading": "The model is still loading.",
}




@dataclass(frozen=True)
class Options:
    """What a client may ask for: each field only narrows what it gets."""

    max_tokens: int | None = None
    resumable: bool = False
    resume: str | None = None
    cancel: str | None = None
    model: str | None = None
    """The model the client will name in its chat body (an SDK helper passes it on); None: the served one."""
    autoload: bool = True

    @classmethod
    def from_body(cls, body: bytes) -> Options:
        """A JSON object; an empty body means `{}`."""
        if not body.strip():
            return cls()
        if len(body) > MAX_BODY_BYTES:
            raise RequestRefusal(INVALID_OPTIONS)
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            raise RequestRefusal(INVALID_OPTIONS) from None
        if not isinstance(raw, dict):
            raise RequestRefusal(INVALID_OPTIONS)
        return cls._from_mapping(raw)

    @classmethod
    def from_query(cls, items: Iterable[tuple[str, str]]) -> Options:
        """Query parameters, for `GET`: the same fields, spelled as strings."""
        raw: dict[str, Any] = {}
        for name, value in items:
            if name in raw:
                raise RequestRefusal(INVALID_OPTIONS, "repeated")
            raw[name] = value
        if raw.keys() - _OPTIONS:
            raise RequestRefusal(UNKNOWN_OPTION)
        if "max_tokens" in raw:
            text = raw["max_tokens"]
            raw["max_tokens"] = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else text
        for name in ("resumable", "autoload"):
            if name in raw:
                raw[name] = _QUERY_BOOLEANS.get(raw[name].lower(), raw[name])
        return cls._from_mapping(raw)

    @classmethod
    def _from_mapping(cls, raw: Mapping[str, Any]) -> Options:
        if raw.keys() - _OPTIONS:
            raise RequestRefusal(UNKNOWN_OPTION)
        max_tokens = raw.get("max_tokens")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise RequestRefusal(INVALID_OPTION)
        resumable = raw.get("resumable", False)
        if not isinstance(resumable, bool):
            raise RequestRefusal(INVALID_OPTION, "resumable")
        resume, cancel = raw.get("resume"), raw.get("cancel")
        for conversation_id in (resume, cancel):
            if conversation_id is not None and not _is_conversation_id(conversation_id):
                raise RequestRefusal(INVALID_OPTION, "conversation")
        if resume is not None and cancel is not None:
            raise RequestRefusal(CONFLICTING_OPTIONS)
        model, autoload = raw.get("model"), raw.get("autoload", True)
        if model is not None and not isinstance(model, str):
            raise UnknownModel(None)
        if not isinstance(autoload, bool):
            raise RequestRefusal(INVALID_OPTION, "autoload")
        return cls(max_tokens=max_tokens, resumable=resumable, resume=resume, cancel=cancel, model=model,
                   autoload=autoload)


@dataclass(frozen=True)
class GateHealth:
    """The gate's last `GET /health` answer, as the app's poller saw it."""

    up: bool
    model_ready: bool = False
    model: str | None = None
    vision: bool = False
    slots: Mapping[str, int] = field(default_factory=dict)
    models: tuple[ModelInfo, ...] = ()
    not_issued_before: int | None = None
    """The gate's start cut-off: it refuses a token whose `iat` is earlier (its replay cache is new)."""

    @classmethod
    def from_answer(cls, answer: object) -> GateHealth:
        """A health body; one of an unexpected shape counts as a gate that is down."""
        if not isinstance(answer, dict) or answer.get("gate") != "ok":
            return GATE_DOWN
        slots = answer.get("slots")
        model = answer.get("model")
        cut_off = answer.get("not_issued_before")
        return cls(
            up=True,
            model_ready=answer.get("model_ready") is True,
            model=model if isinstance(model, str) else None,
            vision=answer.get("vision") is True,
            slots=slots if isinstance(slots, dict) else {},
            models=ModelInfo.parse_all(answer.get("models")),
            not_issued_before=cut_off if isinstance(cut_off, int) and not isinstance(cut_off, bool) else None,
        )


GATE_DOWN = GateHealth(up=False)


@dataclass(frozen=True)
class Policy:
    """The server's side of a negotiation, fixed at startup."""

    model: str
    max_tokens_cap: int
    ttl: int
    public_base: str | None = None
    public_prefix: str = ""
    gate_port: int | None = None
    models: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> Policy:
        return cls(
            model=settings.model,
            models=settings.models,
            max_tokens_cap=settings.max_tokens_cap,
            ttl=settings.token_ttl,
            public_base=settings.public_base,
            public_prefix=settings.public_prefix,
            gate_port=settings.gate_port,
        )

    @property
    def fallback_url(self) -> str:
        return self.public_prefix + FALLBACK_PATH

    def lane_url(self, scheme: str, host: str) -> str:
        """The lane's base as the browser reaches it: `--public-url` wins, then the request's own host."""
        if self.public_base is not None:
            return self.public_base + LANE_PREFIX
        if self.gate_port is not None:
            return f"{scheme}://{split_host(host)[0]}:{self.gate_port}{LANE_PREFIX}"
        return f"{scheme}://{checked_host(host)}{LANE_PREFIX}"

    def app_origin(self, scheme: str, host: str) -> str:
        """The page's own origin, which a cookie-carrying request's `Origin` may name."""
        if self.public_base is not None:
            parts = self.public_base.split("/", 3)
            return "/".join(parts[:3]).lower()
        return f"{scheme}://{checked_host(host)}".lower()


def checked_host(host: str) -> str:
    """`host[:port]` from the Host header, refused when it could smuggle anything into a URL."""
    if not host or len(host) > 260 or not _HOST.fullmatch(host):
        raise RequestRefusal(BAD_HOST)
    return host


def split_host(host: str) -> tuple[str, int | None]:
    host = checked_host(host)
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", int(rest[1:]) if rest else None
    name, _, port = host.partition(":")
    return name, int(port) if port else None


class Conversations:
    """Conversation id -> owner, for resumable streams, so one user cannot resume or cancel another's."""

    def __init__(self, ttl: float = CONVERSATION_TTL_SECONDS, max_entries: int = MAX_CONVERSATIONS) -> None:
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._ttl = ttl
        self._max = max_entries

    def open(self, user: str, now: float) -> str:
        self._expire(now)
        conversation_id = secrets.token_urlsafe(16)
        self._owners[conversation_id] = (user, now + self._ttl)
        while len(self._owners) > self._max:
            self._owners.popitem(last=False)
        return conversation_id

    def owner(self, conversation_id: str, now: float) -> str | None:
        entry = self._owners.get(conversation_id)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def _expire(self, now: float) -> None:
        while self._owners:
            _, (_, forget_at) = next(iter(self._owners.items()))
            if forget_at > now:
                return
            self._owners.popitem(last=False)

    def __len__(self) -> int:
        return len(self._owners)


@dataclass(frozen=True)
class Issuer:
    """Who signs and for whom: the broker's current key, its id (`iss`) and the gate's (`aud`)."""

    key: SigningKey
    issuer: str
    audience: str


def unsupported(reason: str, policy: Policy) -> dict[str, Any]:
    return {
        "supported": False,
        "reason": reason,
        "message": UNSUPPORTED_MESSAGES[reason],
        "fallback_url": policy.fallback_url,
    }


def unsupported_reason(enabled: bool, health: GateHealth) -> str | None:
    if not enabled:
        return "disabled"
    if not health.up:
        return "gate_down"
    if not health.model_ready:
        return "model_loading"
    return None


def negotiate(
    options: Options,
    *,
    user: str,
    origin: str | None,
    url: str,
    policy: Policy,
    health: GateHealth,
    enabled: bool,
    conversations: Conversations,
    issuer: Issuer,
    now: float,
) -> dict[str, Any]:
    """The answer to one `/direct-stream`; raises `RequestRefusal` for a conversation not the user's,
    or `UnknownModel` for a model the user may not use (even with the lane off: the fallback would
    answer with another model)."""
    model = choose_model(options.model, allowed_models(policy.models, policy.model, health.models))
    reason = unsupported_reason(enabled, health)
    if reason is not None:
        return unsupported(reason, policy)
    named = options.resume if options.resume is not None else options.cancel
    lane = RESUME if options.resume is not None else CANCEL if options.cancel is not None else CHAT
    conversation_id: str | None = None
    if named is not None:  # a route that continues a conversation: only its owner's
        conversation_id = _owned(named, user, conversations, now)
    elif lane.opens_conversation and options.resumable:
        conversation_id = conversations.open(user, now)
    scope = lane.scope
    cap = policy.max_tokens_cap
    grant = Grant(
        routes=(lane.key,),
        model=model,
        autoload=options.autoload,
        max_tokens=min(options.max_tokens, cap) if options.max_tokens is not None else cap,
        origin=origin,
        conversation_id=conversation_id,
    )
    minted = mint(
        issuer.key,
        issuer=issuer.issuer,
        audience=issuer.audience,
        subject=user,
        scope=scope,
        grant=grant,
        now=now,
        ttl=policy.ttl,
    )
    return {
        "supported": True,
        "url": url,
        "token": minted.token,
        "expires_at": minted.claims.exp,
        "ttl_seconds": minted.claims.exp - minted.claims.iat,
        "model": model,
        "conversation_id": conversation_id,
        "scope": scope,
        "grant": grant.to_claim(),
        "fallback_url": policy.fallback_url,
    }


def _owned(conversation_id: str, user: str, conversations: Conversations, now: float) -> str:
    """The id, when `user` opened it; an unknown id gets the same refusal, so ids cannot be probed."""
    if conversations.owner(conversation_id, now) != user:
        raise RequestRefusal(CONVERSATION_NOT_OWNED)
    return conversation_id


def _is_conversation_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_CONVERSATION_ID_LENGTH
        and _CONVERSATION_ID.fullmatch(value) is not None
    )
