"""The TypeScript clients' route list (`frontend/src/lanes.ts`) is the registry's, as generated."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lanes_ts.py"


def test_frontend_lanes_ts_is_generated_from_the_registry() -> None:
    spec = importlib.util.spec_from_file_location("lanes_ts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("lanes_ts", module)
    spec.loader.exec_module(module)
    assert module.TARGET.read_text() == module.render(), "run: .venv/bin/python scripts/lanes_ts.py"
