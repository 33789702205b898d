"""The error body a refusal must have, with its `reason` read from the catalogue by its message.

A case names the status and the exact message it expects; the reason is the one catalogue entry
(any wording of it) with that status whose message that is, so a body with the right words and
the wrong code fails, and so does a message that no entry, or two entries, could have made.
"""

from __future__ import annotations

import re
from typing import Any

from llama_direct.refusals import CATALOGUE, REFUSED, Reason, error_type


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template.replace("{{", "{").replace("}}", "}"))
    return re.compile("".join(".+" if re.fullmatch(r"\{\w+\}", p) else re.escape(p) for p in parts))


def _matches(reason: Reason, status: int, message: str) -> bool:
    if reason.status != status and reason is not REFUSED:
        return False
    templates = (reason.message, *reason.variants.values())
    return any(_pattern(t).fullmatch(message) for t in templates)


def reason_for(status: int, message: str) -> str:
    found = [reason.code for reason in CATALOGUE.values() if _matches(reason, status, message)]
    assert len(found) == 1, f"{status} {message!r} fits catalogue entries {found}"
    return found[0]


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """llama-server's error shape plus the refusal's code (and `param`, for a refusal that names a field)."""
    error: dict[str, Any] = {"message": message, "type": error_type(status), "code": status,
                             "reason": reason_for(status, message)}
    if param is not None:
        error["param"] = param
    return {"error": error}
