"""`bench --before REV`: the before/after table's layout, and REV's modules loaded beside this code's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llama_direct.tokens
from llama_launcher.bench.before import load_beside, materialise, render, repository


def _lane(p50: float, p99: float, **cpu: float) -> dict[str, Any]:
    return {"count": 3, "p50_ms": p50, "p99_ms": p99, "cpu_ms_per_request": sum(cpu.values()),
            "cpu_ms_per_request_by_process": cpu}


def _results() -> dict[str, Any]:
    return {
        "before": {"rev": "abc1234", "commit": "abc1234" + "0" * 33, "idle_cpu": {"gate": 7.5, "broker": 3.25},
                   "verification": {"ES256": {"before_us": 210.0, "after_us": 95.0},
                                    "EdDSA": {"before_us": 250.0, "after_us": 160.0}}},
        "first_token": {"raw": _lane(0.5, 1.0), "relay": _lane(1.0, 2.0, relay=0.4),
                        "direct": _lane(1.25, 3.0, gate=0.6), "before": _lane(1.75, 4.0, before_gate=0.9),
                        "haproxy": _lane(0.75, 1.5, haproxy=0.2)},
        "first_token_real": {"raw": _lane(15.0, 20.0), "relay": _lane(15.5, 21.0), "direct": _lane(16.0, 22.0),
                             "before": _lane(17.0, 25.0), "budgeted": _lane(16.5, 23.0)},
        "gate_cost": {"real": {"gate_ms_per_request": 0.45, "before": {
                                   "gate_ms_per_request": 1.2,
                                   "gate_ratio": {"median": 0.375, "p25": 0.3125, "p75": 0.5, "rounds": 15.0}},
                               "relay": {"ms_per_request": 0.3}},
                      "synthetic": {"gate_ms_per_request": 0.5}},
        "idle_cpu": {"gate": 0.25, "broker": 0.5},
        "idle": {"settle_s": 10.0, "window_s": 15.0, "windows": [{}, {}]},
    }


def test_the_table_lines_up_before_after_haproxy_and_the_relay() -> None:
    lines = render(_results())
    assert "the code at `abc1234` (abc12340000" in lines[1] and "2 window(s) of 15 s after 10 s" in lines[1]
    assert lines[3] == ("| measure | goal | before (abc1234) | after | HAProxy 2.6 in the gate's place "
                        "| bare relay (floor) |")
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[5:]}
    assert rows["P3 added TTFT p50 / p99, synthetic (one-token streams)"].endswith(
        "| +1.25 / +3.00 ms | +0.75 / +2.00 ms | +0.25 / +0.50 ms | +0.50 / +1.00 ms |")
    assert rows["P3 added TTFT p50 / p99, real model (one-token streams)"].endswith(
        "| +2.00 / +5.00 ms | +1.00 / +2.00 ms | – | +0.50 / +1.00 ms |")
    assert rows["P3 added TTFT p50 / p99, real model, a user with a token budget"].endswith(
        "| – | – | +1.50 / +3.00 ms | – | – |")  # REV has no budgets
    assert rows["P3 added TTFT p50 / p99, synthetic, a user with a token budget"].endswith("| – | – | – | – | – |")
    assert rows["P5 ES256 verification per token"].endswith("| ≤ 100 µs | 210 µs | 95 µs | – | – |")
    assert rows["P7 gate CPU per lane request, real model, kept-alive"].endswith(
        "| 1.200 ms | 0.450 ms | – | 0.300 ms |")
    assert rows["P7 gate CPU per lane request, synthetic, `Connection: close`"].endswith(
        "| – | 0.500 ms | – | – |")  # a figure the run lacks is a dash, never a zero
    assert rows["P7 gate CPU, after ÷ before, median of per-round ratios [quartiles], real model, kept-alive"].endswith(
        "| ≤ 1.00 | – | 0.375× [0.312–0.500], 15 rounds | – | – |")
    assert rows["P7 gate CPU, after ÷ before, median of per-round ratios [quartiles], synthetic, `Connection: close`"
                ].endswith("| ≤ 1.00 | – | – | – | – |")
    assert rows["CPU of the lane's own process per one-token request (the P3 synthetic run)"].endswith(
        "| 0.900 ms | 0.600 ms | 0.200 ms | 0.400 ms |")
    assert rows["Idle gate CPU"].endswith("| 7.50 ms/s | 0.25 ms/s | – | – |")
    assert rows["Idle broker CPU"].endswith("| 3.25 ms/s | 0.50 ms/s | – | – |")


def test_no_before_no_table() -> None:
    assert render({k: v for k, v in _results().items() if k != "before"}) == []


@pytest.mark.parametrize("rev", ["--output=/tmp/x", ""])
def test_a_revision_that_looks_like_an_option_is_refused(tmp_path: Path, rev: str) -> None:
    with pytest.raises(RuntimeError, match="is not a revision"):
        materialise(rev, tmp_path)


def _has_commit(rev: str) -> bool:
    git = shutil.which("git")
    return git is not None and subprocess.run(
        [git, "-C", str(repository()), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True).returncode == 0


def test_revs_modules_load_beside_ours_and_ours_stay(tmp_path: Path) -> None:
    if not _has_commit("HEAD"):
        pytest.skip("not a git checkout")
    tree = materialise("HEAD", tmp_path)
    ours = sys.modules["llama_direct.tokens"]
    (theirs,) = load_beside(tree.path, ["llama_direct.tokens"])
    assert Path(theirs.__file__ or "").is_relative_to(tree.path)
    assert theirs is not ours and sys.modules["llama_direct.tokens"] is ours is llama_direct.tokens
    assert theirs.verify is not llama_direct.tokens.verify
    assert str(tree.path) not in sys.path


def test_p7_shows_the_broker_and_a_budgeted_user_beside_the_owner() -> None:
    """The gate's usage reports cost the broker too, and a user with a token budget reserves at each
    negotiation and settles at each end: both are rows of their own; REV has no budgeted user."""
    results = _results()
    real = results["gate_cost"]["real"]
    real.update(broker_ms_per_request=0.05, negotiation_ms_per_request={"gate": 0.3, "broker": 1.5},
                budgeted={"gate_ms_per_request": 0.5, "broker_ms_per_request": 0.12,
                          "negotiation_ms_per_request": {"gate": 0.31, "broker": 2.0}})
    real["before"].update(broker_ms_per_request=0.0, negotiation_ms_per_request={"gate": 0.3, "broker": 1.4})
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in render(results)[5:]}
    assert rows["P7 broker CPU per lane request, real model, kept-alive"].endswith("| 0.000 ms | 0.050 ms | – | – |")
    assert rows["P7 gate / broker CPU per lane request, a user with a token budget, real model, kept-alive"].endswith(
        "| – | 0.500 ms / 0.120 ms | – | – |")
    assert rows["Broker CPU per negotiation, owner / a user with a token budget (its reservation), real model, "
                "kept-alive"].endswith("| 1.400 ms | 1.500 ms / 2.000 ms | – | – |")
    assert rows["P7 gate / broker CPU per lane request, a user with a token budget, synthetic, `Connection: close`"
                ].endswith("| – | – / – | – | – |")
