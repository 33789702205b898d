"""The FastAPI example (`examples/fastapi-app/app.py`) as a module, for tests that mount the broker the
way a host app does: it is a script, not a package, so it is loaded from its path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

EXAMPLE_APP = Path(__file__).resolve().parents[2] / "examples" / "fastapi-app" / "app.py"


def example_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE_APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
