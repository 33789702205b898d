"""The soak, short: 32 streams through the gate for 30 s, 0 errors, gate RSS within 10% of its warm level.

The documented long run is `llama-direct bench soak --streams 32 --seconds 600`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real


@pytest.mark.timeout(120)
def test_soak_30_seconds_has_no_error_and_flat_memory(tmp_path: Path) -> None:
    summary = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "llama_launcher.cli", "bench", "soak", "--streams", "32", "--seconds", "30",
         "--out", str(summary)],
        capture_output=True, text=True, timeout=100,
    )
    found = json.loads(summary.read_text())
    assert (found["errors"], found["passed"]) == (0, True), done.stdout + done.stderr[-2000:]
    assert done.returncode == 0
    assert found["completed"] >= 32
    assert abs(found["rss_growth"]) <= 0.10
    assert done.stdout.startswith("soak: 32 concurrent streams for 30 s through the gate: ")
