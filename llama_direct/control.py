"""The control socket's one document the gate waits on: the JWKS and the revocations, with a version.

The gate asks `GET /state?known=<version>`. When the broker's state has another version, it
answers at once (200 and the document); when it is the one the gate holds, the broker holds the
request until the state changes (a revocation, a key staged, promoted or retired) or `HOLD_SECONDS`
pass, then answers 304 with no body. So a revocation reaches the gate as soon as it is recorded,
and an idle pair costs one small exchange every `HOLD_SECONDS` instead of two full pulls a second.

Pure: the version is a digest of the canonical JSON of what it names, so the same state has the
same version in every broker process, and a gate that pulled it some other way is still current.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, TypeGuard

from llama_direct.budgets import UsageReport

STATE_PATH = "/state"
KNOWN_PARAMETER = "known"
HOLD_SECONDS = 10.0
"""The longest the broker holds a long poll; the gate's read timeout is this plus a margin."""


def state_document(jwks: dict[str, Any], revocations: dict[str, Any]) -> dict[str, Any]:
    """`{"version", "jwks", "revocations"}`, the version naming exactly this content."""
    canonical = json.dumps({"jwks": jwks, "revocations": revocations}, sort_keys=True, separators=(",", ":"))
    version = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    return {"version": version, "jwks": jwks, "revocations": revocations}


LOADS_PATH = "/loads"
"""`POST` by the gate, before it forwards a request that makes a router load its model: the body is
`load_charge(user, model)`. The broker answers 204 (charged to `user`'s loads) or 429 with
`Retry-After` (over `--loads-per-minute`: the gate refuses the request with it, and nothing loads)."""


def load_charge(user: str, model: str) -> dict[str, str]:
    """The one document of `POST /loads`: whose request causes the load, and of which model."""
    return {"user": user, "model": model}


def parse_load_charge(document: object) -> tuple[str, str] | None:
    """(user, model) from a `POST /loads` body, or None when it is not `load_charge`'s shape."""
    if not isinstance(document, dict) or document.keys() != {"user", "model"}:
        return None
    user, model = document["user"], document["model"]
    if not isinstance(user, str) or not isinstance(model, str) or not user or not model:
        return None
    return user, model


USERS_CHANGED_PATH = "/users/changed"
"""`POST` (no body) by `llama-direct users` after it removed or rotated a user in the data dir's store:
the broker applies the store's revocations at once and wakes the gate's held poll, so a grant the
user already holds is refused. Only a process that can reach the runtime dir (0700) can ask; asking
only makes the broker read what the store already says."""


REVOKED_PATH = "/revoked"
"""`POST` by a broker mounted in a host app (`broker.mount.mounted_core`) to the broker half of the lane it
runs beside, which the gate polls: the body is `revocation(user, not_before)`, a revocation the host
recorded (its logout, `/direct-stream/revoke`). The lane's broker records it and wakes the gate's held
poll; 204. Only a process that can reach the runtime dir (0700) can ask."""


def revocation(user: str, not_before: int) -> dict[str, object]:
    """The one document of `POST /revoked`: whose tokens, issued before which second, are refused."""
    return {"user": user, "not_before": not_before}


def parse_revocation(document: object) -> tuple[str, int] | None:
    """(user, not_before) from a `POST /revoked` body, or None when it is not `revocation`'s shape."""
    if not isinstance(document, dict) or document.keys() != {"user", "not_before"}:
        return None
    user, not_before = document["user"], document["not_before"]
    if not isinstance(user, str) or not user or isinstance(not_before, bool) or not isinstance(not_before, int):
        return None
    return user, not_before


GATE_UNLOAD_PATH = "/unload"
"""`POST` by the broker to the gate's private socket (not the control socket: the gate holds llama-server's
key): the body is `unload_request(model)`. The gate asks each router serving `model` to unload it
(llama-server's `POST /models/unload`, which no lane request reaches) and answers 204 (unloaded, or it
was not loaded), 404 (no router serves that name), 409 (no router: one model, loaded with its server) or
502 (a router did not answer). The broker's owner-only `MODEL_UNLOAD_PATH` is the only caller."""


def unload_request(model: str) -> dict[str, str]:
    """The one document of an unload, to the broker (`MODEL_UNLOAD_PATH`) and from it to the gate."""
    return {"model": model}


def parse_unload_request(document: object) -> str | None:
    """The model's name from `unload_request`'s shape, or None when it is not that shape."""
    if not isinstance(document, dict) or document.keys() != {"model"}:
        return None
    model = document["model"]
    return model if isinstance(model, str) and 0 < len(model) <= _MAX_NAME else None


USAGE_PATH = "/usage"
"""`POST` by the gate about lane requests it forwarded under grants: the body is one of `usage_batches`,
`{"reports": [usage_report(...), ...]}`, the reports in the order their streams reached them.
`started` when the stream outlives its grant (so its reservation is held, not returned as unused);
`ended` once its answer's end was relayed, with the tokens llama-server reported in it
(`llama_launcher.gate.usage_tail`), or with none when the end was not seen (the client left, the
upstream failed): then the whole reservation is charged. Sent after the last byte went to the client,
never on a request's way; the gate coalesces the ends of a moment into one body, so that each stream does
not cost the gate and the broker an exchange of its own. The broker settles each grant's reservation and
writes the usage ledger (`llama_direct.budgets`); 204."""
MAX_USAGE_BODY_BYTES = 64 * 1024
"""The largest `POST /usage` body: the gate packs its reports into bodies no larger, the broker reads no
more. One report always fits: its five names are at most `_MAX_NAME` characters each (12 bytes each
at most, escaped)."""
USAGE_PHASES = ("started", "ended")


def usage_report(usage: UsageReport) -> dict[str, object]:
    """One report of a `POST /usage` body (`usage_batches`)."""
    return {"jti": usage.jti, "sub": usage.sub, "model": usage.model, "route": usage.route, "lane": usage.lane,
            "phase": usage.phase, "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}


def parse_usage_report(document: object) -> UsageReport | None:
    """A `UsageReport` from one report of a `POST /usage` body, or None when it is not `usage_report`'s shape."""
    if not isinstance(document, dict) or document.keys() != _USAGE_KEYS:
        return None
    texts = [document[name] for name in ("jti", "sub", "model", "route", "lane")]
    if not all(isinstance(text, str) and 0 < len(text) <= _MAX_NAME for text in texts):
        return None
    prompt, completion = document["prompt_tokens"], document["completion_tokens"]
    if document["phase"] not in USAGE_PHASES or not (_is_count(prompt) and _is_count(completion)):
        return None
    jti, sub, model, route, lane = (str(text) for text in texts)
    return UsageReport(jti, sub, model, route, lane, str(document["phase"]), prompt, completion)


def usage_batches(reports: Sequence[UsageReport], limit: int = MAX_USAGE_BODY_BYTES) -> list[bytes]:
    """The `POST /usage` bodies that carry `reports` in order, each at most `limit` bytes; none for none."""
    bodies: list[bytes] = []
    parts: list[bytes] = []
    size = len(_BATCH_OPEN) + len(_BATCH_CLOSE)
    for start in range(0, len(reports), _GROUP):
        group = [usage_report(report) for report in reports[start : start + _GROUP]]
        joined = _COMPACT.encode(group)[1:-1].encode()  # the group's reports, comma-separated
        if size + len(joined) + 1 <= limit:  # each report would fit after the one before: the same bytes
            parts.append(joined)
            size += len(joined) + 1
            continue
        for document in group:  # the body ends within this group: report by report
            part = _COMPACT.encode(document).encode()
            if parts and size + len(part) + 1 > limit:
                bodies.append(_BATCH_OPEN + b",".join(parts) + _BATCH_CLOSE)
                parts, size = [], len(_BATCH_OPEN) + len(_BATCH_CLOSE)
            parts.append(part)
            size += len(part) + 1
    if parts:
        bodies.append(_BATCH_OPEN + b",".join(parts) + _BATCH_CLOSE)
    return bodies


def parse_usage_batch(document: object) -> list[UsageReport] | None:
    """The reports of a `POST /usage` body, in order; None when it is not `usage_batches`' shape or any
    report in it is not `usage_report`'s."""
    if not isinstance(document, dict) or document.keys() != {"reports"}:
        return None
    items = document["reports"]
    if not isinstance(items, list) or not items:
        return None
    reports = [parse_usage_report(item) for item in items]
    return None if None in reports else [report for report in reports if report is not None]


def _is_count(value: object) -> TypeGuard[int | None]:
    return value is None or (type(value) is int and 0 <= value <= _MAX_COUNT)


_BATCH_OPEN = b'{"reports":['
_BATCH_CLOSE = b"]}"
_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""`json.dumps(..., separators=(",", ":"))` without a new encoder each report: a busy gate sends hundreds a body."""
_GROUP = 64
"""Reports encoded in one call (`usage_batches`): each call sets up the C encoder anew, half a report's cost."""
_USAGE_KEYS = {"jti", "sub", "model", "route", "lane", "phase", "prompt_tokens", "completion_tokens"}
_MAX_NAME = 512
_MAX_COUNT = 10**12
