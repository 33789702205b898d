"""The hostile suite reuses the gate's fakes (tests/unit) and the real stack's helpers (tests/real).

Both folders are plain directories, not packages, so their modules are imported by name, the way
their own tests import them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("unit", "real"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

pytest.register_assert_rewrite("hostile_support")
