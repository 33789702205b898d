"""What a client may ask of `/direct-stream`: its options, from a JSON body or a `GET` query.

Pure: bytes or query pairs in, a frozen `Options` or a `RequestRefusal` (400) out. Kept apart from
`negotiate` so that every malformed option is a unit test, and the app's parsing is one call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llama_direct.lanes import CANCEL, CHAT, RESUME, ROUTES, LaneRoute
from llama_direct.refusals import (
    CONFLICTING_OPTIONS,
    INVALID_OPTION,
    INVALID_OPTIONS,
    UNKNOWN_OPTION,
    UNKNOWN_ROUTE,
    RequestRefusal,
    UnknownModel,
)

MAX_BODY_BYTES = 4096
MAX_CONVERSATION_ID_LENGTH = 128
QUERY_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
"""How a query spells a boolean option (also the baseline's `?autoload=`, llama-server's spelling)."""

_OPTIONS = frozenset({"route", "max_tokens", "resumable", "resume", "cancel", "model", "autoload"})
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]+")


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
    route: str | None = None
    """The lane route wanted, by its registry name (`llama_direct.lanes.ROUTES`); None: `resume` or
    `cancel` when one is named, else chat. Any entry is granted by name, with no code of its own here."""

    @property
    def lane(self) -> LaneRoute:
        """The registry entry the grant is for."""
        if self.route is not None:
            return ROUTES[self.route]
        return RESUME if self.resume is not None else CANCEL if self.cancel is not None else CHAT

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
                raw[name] = QUERY_BOOLEANS.get(raw[name].lower(), raw[name])
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
        route = _route(raw.get("route"), resume, cancel)
        return cls(max_tokens=max_tokens, resumable=resumable, resume=resume, cancel=cancel, model=model,
                   autoload=autoload, route=route)


def _route(name: object, resume: str | None, cancel: str | None) -> str | None:
    """A registry name (400 `unknown_route` otherwise), which must agree with `resume`/`cancel`: a
    route that resumes a conversation takes `resume`, one that stops it `cancel`, any other neither."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in ROUTES:
        raise RequestRefusal(UNKNOWN_ROUTE)
    conversation = ROUTES[name].conversation
    if (conversation == "resumes") != (resume is not None) or (conversation == "stops") != (cancel is not None):
        raise RequestRefusal(CONFLICTING_OPTIONS, "route")
    return name


def _is_conversation_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_CONVERSATION_ID_LENGTH
        and _CONVERSATION_ID.fullmatch(value) is not None
    )
