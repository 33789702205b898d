"""`llama-direct bench` without its extra, and the serve options the benchmark configures instead of patching."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llama_launcher import cli, supervisor
from llama_launcher.bench import cli as bench_cli


def test_bench_without_matplotlib_fails_at_once_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    ran: list[object] = []
    monkeypatch.setattr(bench_cli, "bench", lambda argv: ran.append(argv) or 0)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err == "llama-direct bench: the plot needs matplotlib: pip install 'llama-direct[bench]'\n"
    assert ran == []


def test_bench_with_matplotlib_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    ran: list[object] = []
    monkeypatch.setattr(bench_cli, "bench", lambda argv: ran.append(argv) or 0)
    assert cli.main(["bench", "--quick"]) == 0
    assert ran == [["--quick"]]


def test_serve_takes_the_rate_limit_the_bench_lifts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plans: list[supervisor.StackPlan] = []
    monkeypatch.setattr(supervisor, "run", lambda plan: plans.append(plan) or 0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_DIRECT_UPSTREAM_KEY", raising=False)
    argv = ["serve", "--upstream", "http://127.0.0.1:9", "--data-dir", str(tmp_path / "d")]
    assert cli.main([*argv, "--rate-per-minute", str(cli.UNLIMITED_RATE), "--burst", "7"]) == 0
    assert cli.main(argv) == 0
    lifted, default = (plan.broker_settings for plan in plans)
    assert (lifted["rate_per_minute"], lifted["burst"]) == (cli.UNLIMITED_RATE, 7)
    assert (default["rate_per_minute"], default["burst"]) == (120, 20)
