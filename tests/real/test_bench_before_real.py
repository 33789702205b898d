"""`llama-direct bench --before REV` end to end, small: the code at REV beside this code's, one run.

Against the synthetic upstream only (`--no-real`), with `--quick`'s counts. Nothing here checks a
timing (CI machines are shared and noisy): only that REV's stack answered every lane request, P7's
rounds and the idle windows, that REV's verifier accepted the token it was timed on, and that the
report's before/after table is there. REV is the last main commit before issue 18's work; a clone
without it (shallow) or without git skips with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llama_launcher.bench.before import repository

pytestmark = pytest.mark.real

REV = "34096c9"


def _rev_missing() -> str | None:
    git = shutil.which("git")
    if git is None:
        return "git is not installed"
    found = subprocess.run([git, "-C", str(repository()), "rev-parse", "--verify", "--quiet", f"{REV}^{{commit}}"],
                           capture_output=True)
    return None if found.returncode == 0 else f"this checkout has no commit {REV} (a shallow clone?)"


@pytest.mark.timeout(120)
def test_before_lane_runs_beside_this_code_on_the_synthetic_upstream(tmp_path: Path) -> None:
    missing = _rev_missing()
    if missing:
        pytest.skip(missing)
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "llama_launcher.cli", "bench", "--quick", "--no-real", "--before", REV,
         "--out", str(out)],
        capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "bench.json").read_text())
    before = results["before"]
    assert before["commit"].startswith(REV)
    first = results["first_token"]
    assert first["before"]["count"] == first["direct"]["count"] == first["raw"]["count"] > 0
    cost = results["gate_cost"]["synthetic"]
    assert all(r["ok"] == r["count"] for r in cost["rounds"] + cost["before"]["rounds"]), cost
    assert set(before["idle_cpu"]) == set(results["idle_cpu"]) == {"gate", "broker"}
    assert set(results["idle"]["ms_per_s"]) == {"gate", "broker", "before_gate", "before_broker"}
    assert all(entry["before_us"] > 0 and entry["after_us"] > 0 for entry in before["verification"].values())
    markdown = (out / "bench.md").read_text()
    assert f"| measure | goal | before ({REV}) | after |" in markdown
    assert "| P7 gate CPU per lane request, synthetic, `Connection: close` |" in markdown


def test_an_unknown_revision_is_one_clear_line() -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "llama_launcher.cli", "bench", "--quick", "--before", "no-such-rev-18", "--out",
         "/nonexistent-bench-out"], capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"llama-direct bench: error: --before: no commit 'no-such-rev-18' in {repository()} "
        "(a shallow clone? git fetch --unshallow)")
