"""Write `frontend/src/documents.ts` from the wire documents' TypedDicts, so the TypeScript clients
read the negotiation answer, the model list and the usage by the same definitions as the broker writes them.

    .venv/bin/python scripts/documents_ts.py

Run it after changing `llama_direct/documents.py` (`tests/unit/test_documents_ts.py` fails until you
do); the file it writes is committed, so the frontend's build needs no Python.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

from llama_direct import documents
from llama_direct.budgets import MY_USAGE_PATH
from llama_direct.lanes import MODEL_UNLOAD_PATH

TARGET = Path(__file__).resolve().parent.parent / "frontend" / "src" / "documents.ts"
EXPORTED = (documents.Granted, documents.Unsupported, documents.ModelEntry, documents.ListedModel,
            documents.ModelList, documents.LedgerDay, documents.MyUsage)
"""The documents a TypeScript client reads (the gate's health is the broker's alone)."""
PATHS = {"MY_USAGE_PATH": MY_USAGE_PATH, "MODEL_UNLOAD_PATH": MODEL_UNLOAD_PATH}
"""The broker paths a TypeScript client reads these documents from, by their Python names."""
_SCALARS: dict[object, str] = {str: "string", int: "number", float: "number", bool: "boolean",
                               type(None): "null", object: "unknown"}


def ts_type(hint: object) -> str:
    """One Python annotation as TypeScript: scalars, literals, lists, unions, string-keyed dicts and
    the TypedDicts above by name."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if typing.is_typeddict(hint):
        return typing.cast(type, hint).__name__
    if origin is typing.Literal:
        return " | ".join(json.dumps(value) for value in arguments)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(ts_type(argument) for argument in arguments)
    if origin is list:
        inner = ts_type(arguments[0])
        return f"({inner})[]" if " " in inner else f"{inner}[]"
    if origin is dict and arguments[0] is str:
        return f"Record<string, {ts_type(arguments[1])}>"
    if hint is typing.Any:
        return "unknown"
    raise TypeError(f"no TypeScript for {hint!r}")


def interface(document: type) -> str:
    lines = [f"export interface {document.__name__} {{"]
    for name, hint in typing.get_type_hints(document, include_extras=True).items():
        optional = typing.get_origin(hint) is typing.NotRequired  # read here: a postponed one is a string
        lines.append(f"  {name}{'?' if optional else ''}: {ts_type(typing.get_args(hint)[0] if optional else hint)};")
    return "\n".join([f"/** {(document.__doc__ or '').strip().splitlines()[0]} */", *lines, "}", ""])


def render() -> str:
    return "\n".join([
        "// Generated from llama_direct/documents.py by scripts/documents_ts.py; do not edit by hand.",
        "// tests/unit/test_documents_ts.py fails when this file and the definitions differ.",
        "",
        *(interface(document) for document in EXPORTED),
        "export type NegotiationAnswer = Granted | Unsupported;",
        "",
        *(f"export const {name} = {json.dumps(path)};" for name, path in PATHS.items()),
        "",
    ])


if __name__ == "__main__":
    TARGET.write_text(render())
