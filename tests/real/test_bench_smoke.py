"""`llama-direct bench --quick` end to end: every lane on both upstreams, and the three outputs.

The machines CI runs on are shared and noisy, so nothing here checks a timing: only that the
benchmark runs through, measures every lane without an error, judges every target, writes its
files, and stops by itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llama_launcher.bench.haproxy_anchor import NOT_INSTALLED, haproxy_binary

pytestmark = pytest.mark.real

LANES = {"raw", "direct", "baseline", "studio", "relay"}


@pytest.mark.timeout(620)  # a hang guard, not a bound: --quick took 70 s idle, over 150 s at load 9
def test_quick_bench_measures_every_lane_and_writes_its_outputs(
    tmp_path: Path, llama_server_binary: Path, model_path: Path
) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "llama_launcher.cli", "bench", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]
    results = json.loads((out / "bench.json").read_text())
    for upstream in ("real", "synthetic"):
        rows = [r for r in results["rows"] if r["upstream"] == upstream]
        assert {r["lane"] for r in rows} == LANES
        assert all(r["errors"] == 0 for r in rows), rows
    assert [t["target"] for t in results["targets"]] == ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "Idle"]
    assert results["memory"]["held"] == results["memory"]["streams"]
    assert set(results["app_load_summary"]) == {"raw", "direct", "baseline"}
    markdown = (out / "bench.md").read_text()
    assert "| target | goal | measured | result |" in markdown
    assert markdown in done.stdout
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if haproxy_binary() is None:
        assert results["haproxy_anchor"] == {"skipped": NOT_INSTALLED}
    else:  # the anchor row: every request through HAProxy in the gate's place answered
        assert results["first_token"]["haproxy"]["count"] == results["first_token"]["direct"]["count"] > 0
        assert "| HAProxy 2.6 in the gate's place (ES256) |" in markdown
