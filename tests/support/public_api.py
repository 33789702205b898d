"""The public names that docs/api.md lists, read from its tables, for the tests that fail when one
disappears: the Python ones are imported, the client's are imported from the packed npm package."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
_ROW = re.compile(r"^\|\s*`(?P<name>[^`]+)`\s*\|\s*(?P<kind>[a-z][a-z ]*?)\s*\|")
VALUE_KINDS = frozenset({"function", "class", "constant"})
"""Kinds that exist at run time (a client `type` or `interface` exists only for tsc)."""


@dataclass(frozen=True)
class Listed:
    name: str
    kind: str


def listed(section: str) -> list[Listed]:
    """The table rows (`| \\`name\\` | kind | …`) under the `## ` heading that starts with `section`."""
    rows: list[Listed] = []
    inside = False
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line[3:].startswith(section)
        elif inside and (match := _ROW.match(line)):
            rows.append(Listed(match["name"], match["kind"]))
    if not rows:
        raise AssertionError(f"docs/api.md lists nothing under a heading starting with {section!r}")
    return rows
