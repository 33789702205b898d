"""Every Python name that docs/api.md lists still exists: a public name removed or renamed fails here,
so that a change of the public API is a change of that page too."""

from __future__ import annotations

import importlib

import pytest
from public_api import Listed, listed

PYTHON_NAMES = [entry for section in ("Broker", "Python client", "Launcher") for entry in listed(section)]


def _resolve(dotted: str) -> object:
    """The object a dotted name names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("entry", PYTHON_NAMES, ids=lambda entry: entry.name)
def test_a_listed_python_name_exists(entry: Listed) -> None:
    if entry.kind == "attribute":
        owner, _, name = entry.name.rpartition(".")
        cls = _resolve(owner)
        assert name in getattr(cls, "__annotations__", {}) or name in vars(cls) or \
            name in _init_assignments(cls), f"{entry.name} is listed in docs/api.md but gone"
        return
    found = _resolve(entry.name)
    if entry.kind in ("function", "method"):
        assert callable(found)
    elif entry.kind == "class":
        assert isinstance(found, type)


def _init_assignments(cls: object) -> set[str]:
    """Attributes a class sets on `self` in `__init__` (BrokerCore's `settings`), read from its code."""
    init = getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    return set(code.co_names) if code is not None else set()


def test_the_tables_are_read() -> None:
    assert {"broker.mount.direct_router", "broker.core.BrokerCore"} <= {entry.name for entry in PYTHON_NAMES}
    assert {"streamChat", "directFetch"} <= {entry.name for entry in listed("Client")}
