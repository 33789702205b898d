"""The TypeScript clients' route list (`frontend/src/lanes.ts`) is the registry's, as generated."""

from __future__ import annotations

from generated_files import load_script


def test_frontend_lanes_ts_is_generated_from_the_registry() -> None:
    module = load_script("lanes_ts")
    assert module.TARGET.read_text() == module.render(), "run: .venv/bin/python scripts/lanes_ts.py"
