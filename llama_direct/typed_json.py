"""One checker for JSON read against a TypedDict: the wire documents and the config files use it.

A document's definition (`llama_direct.documents`) is the one place its
keys and their types are written; a reader of untrusted or on-disk JSON hands the decoded value to
`check_document` and gets it back typed, or a `MalformedDocument` that names the first field that is
wrong, never its value (a config file may name a path; a health answer is the gate's to word).

Types understood: `str`, `int` (not a bool), `float` (an int is a float in JSON), `bool`, `None`,
`object`/`Any` (anything), `Literal[...]`, unions, `list[X]`, `tuple[X, ...]` and `tuple[X, Y]`
(a JSON array either way, read back as a list), `dict[str, X]` and nested TypedDicts (their
`NotRequired` keys may be left out). Pure.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class MalformedDocument(ValueError):
    """A JSON document that is not what its definition says: the message names the field and what it
    should be, never the value found."""


def parse_document(body: bytes | str, document: type[T], *, name: str) -> T:
    """`body` decoded as JSON and checked against `document`; `name` says which document in the error."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedDocument(f"{name} is not JSON") from None
    return check_document(raw, document, name=name)


def check_document(raw: object, document: type[T], *, name: str) -> T:
    """`raw` (decoded JSON) checked against the TypedDict `document`: every required key present,
    no key the definition does not name, every value of its declared type."""
    try:
        _check(raw, document, "")
    except _Wrong as wrong:
        where, what = wrong.args
        raise MalformedDocument(f"{name}: {where} {what}" if where else f"{name} {what}") from None
    return typing.cast(T, raw)


class _Wrong(Exception):
    """(where, what is wrong there), turned into a `MalformedDocument` that names the document."""


def _key(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


@functools.cache
def _fields(document: type) -> tuple[dict[str, object], frozenset[str]]:
    """The TypedDict's keys with their types, and which of them are required: read from the hints, since
    under postponed annotations `__required_keys__` cannot see a `NotRequired`."""
    hints: dict[str, object] = {}
    required: set[str] = set()
    for key, hint in typing.get_type_hints(document, include_extras=True).items():
        if typing.get_origin(hint) is typing.NotRequired:
            hint = typing.get_args(hint)[0]
        elif typing.cast(Any, document).__total__:
            required.add(key)
        hints[key] = hint
    return hints, frozenset(required)


def _check(value: object, hint: object, where: str) -> None:
    if typing.is_typeddict(hint):
        _check_typeddict(value, typing.cast(type, hint), where)
        return
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if not any(_fits(value, argument, where) for argument in arguments):
            raise _Wrong(where, f"must be {_describe(hint)}")
        return
    if origin is typing.Literal:
        if not any(value == argument and type(value) is type(argument) for argument in arguments):
            raise _Wrong(where, f"must be {_describe(hint)}")
        return
    if origin in (list, tuple):
        _check_array(value, hint, where)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise _Wrong(where, "must be an object")
        for key, item in value.items():
            _check(item, arguments[1], _key(where, key))
        return
    if not _scalar_fits(value, hint):
        raise _Wrong(where, f"must be {_describe(hint)}")


def _check_typeddict(value: object, document: type, where: str) -> None:
    if not isinstance(value, dict):
        raise _Wrong(where, "must be an object")
    hints, required = _fields(document)
    unknown = sorted(str(key) for key in value.keys() - hints.keys())
    if unknown:
        raise _Wrong(where, f"has unknown fields: {', '.join(unknown)}")
    missing = sorted(required - value.keys())
    if missing:
        raise _Wrong(where, f"lacks {', '.join(missing)}")
    for key, item in value.items():
        _check(item, hints[key], _key(where, key))


def _check_array(value: object, hint: object, where: str) -> None:
    if not isinstance(value, list):
        raise _Wrong(where, "must be an array")
    arguments = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and not (len(arguments) == 2 and arguments[1] is Ellipsis):
        if len(value) != len(arguments):
            raise _Wrong(where, f"must hold {len(arguments)} items")
        for index, (item, argument) in enumerate(zip(value, arguments, strict=True)):
            _check(item, argument, f"{where}[{index}]")
        return
    for index, item in enumerate(value):
        _check(item, arguments[0], f"{where}[{index}]")


def _fits(value: object, hint: object, where: str) -> bool:
    try:
        _check(value, hint, where)
    except _Wrong:
        return False
    return True


def _scalar_fits(value: object, hint: object) -> bool:
    if hint in (object, Any):
        return True
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    raise TypeError(f"no JSON check for {hint!r}")


_NAMES: dict[object, str] = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                             type(None): "null", None: "null"}


def _describe(hint: object) -> str:
    """What a value of `hint` is, in words, for an error."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(argument) for argument in arguments)
    if origin is typing.Literal:
        return " or ".join(json.dumps(argument) for argument in arguments)
    if origin in (list, tuple):
        return "an array"
    if origin is dict or typing.is_typeddict(hint):
        return "an object"
    return _NAMES.get(hint, "a value")
