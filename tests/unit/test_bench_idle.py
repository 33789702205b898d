"""The bench's idle figure per mode (issue 24): who is measured, how it is judged and shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llama_launcher.bench import cli as bench_cli
from llama_launcher.bench import idle
from llama_launcher.bench.report import render_markdown
from llama_launcher.bench.summary import verdicts

FOUND = {
    "settle_s": 30.0, "window_s": 15.0, "windows": 3, "limit_ms_per_s": 1.0,
    "ms_per_s": {
        "launched": {"serve": 0.0, "broker": 0.17, "gate": 0.18, "llama-server": 0.06},
        "router": {"serve": 0.0, "broker": 0.16, "gate": 0.17, "llama-server": 0.01, "model-1": 0.04},
        "attached": {"serve": 0.0, "broker": 0.17, "gate": 0.19},
        "before:launched": {"serve": 0.54, "broker": 0.16, "gate": 4.08, "llama-server": 0.06},
    },
}


def test_the_table_has_a_row_per_mode_and_a_column_per_process() -> None:
    lines = idle.render(FOUND)
    assert lines[0].startswith("Idle CPU per process (ms of CPU per second; median of 3 window(s) of 15 s after 30 s")
    assert lines[2] == "| mode | serve | broker | gate | llama-server | model-1 |"
    assert "| router | 0.000 | 0.160 | 0.170 | 0.010 | 0.040 |" in lines
    assert "| attached | 0.000 | 0.170 | 0.190 | – | – |" in lines
    assert "| before:launched | 0.540 | 0.160 | 4.080 | 0.060 | – |" in lines
    assert idle.render({}) == []


def test_only_this_codes_processes_over_the_limit_are_named() -> None:
    assert idle.over_limit(FOUND) == []  # the code before is measured beside, not judged
    busy = {**FOUND, "ms_per_s": {**FOUND["ms_per_s"], "launched": {"gate": 4.2, "serve": 0.5}}}
    assert idle.over_limit(busy) == ["launched/gate"]


def test_the_idle_verdict_covers_every_process_of_every_mode() -> None:
    found = {v.target: v for v in verdicts({"idle_modes": FOUND, "idle_cpu": {"gate": 0.2, "broker": 0.25}})}
    assert found["Idle"].passed is True
    assert found["Idle"].measured == ("launched: at most 0.18 ms/s (gate); router: at most 0.17 ms/s (gate); "
                                      "attached: at most 0.19 ms/s (gate); synthetic: gate 0.20 ms/s, broker 0.25 ms/s")
    busy = {**FOUND, "ms_per_s": {**FOUND["ms_per_s"], "router": {"gate": 4.1, "llama-server": 0.01}}}
    assert {v.target: v for v in verdicts({"idle_modes": busy})}["Idle"].passed is False


def test_the_report_shows_the_table() -> None:
    text = render_markdown({"machine": {}, "command": "llama-direct bench", "rounds": [], "duration_s": 1.0,
                            "idle_modes": FOUND})
    assert "| launched | 0.000 | 0.170 | 0.180 | 0.060 | – |" in text


def test_a_stacks_family_is_named_by_role(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = {10: [11, 12], 12: [13], 13: [15, 14]}
    monkeypatch.setattr(idle, "children", lambda pid: tree.get(pid, []))
    modules = {"broker": 11, idle.GATE_MODULES: 12}
    monkeypatch.setattr(idle, "child_running", lambda pid, module: modules[module])
    assert idle.family(10) == {"serve": 10, "broker": 11, "gate": 12, "llama-server": 13, "model-1": 14,
                               "model-2": 15}


def test_every_stack_is_read_in_the_same_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    stacks = {mode: idle.IdleStack(mode, None, "t", "http://x", None, pids={"gate": os.getpid()})  # type: ignore[arg-type]
              for mode in ("launched", "attached")}
    readings = iter([0, 0, 3_000_000, 6_000_000])  # ns: 3 ms and 6 ms of CPU over the window
    monkeypatch.setattr(idle, "thread_cpu_ns", lambda pid: next(readings))
    monkeypatch.setattr(idle.time, "sleep", lambda seconds: None)
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(idle.time, "perf_counter", lambda: next(clock))
    found = idle.measure(stacks, settle=0.0, seconds=2.0, windows=1)
    assert found["ms_per_s"] == {"launched": {"gate": 1.5}, "attached": {"gate": 3.0}}


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no idle mode 'swarm'"):
        idle.start("swarm", tmp_path, binary=tmp_path / "llama-server", model=tmp_path / "m.gguf")


def test_the_full_bench_measures_every_mode_and_the_quick_one_the_default(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    assert bench_cli.FULL.idle_modes == ("launched", "router", "attached", "fleet")
    assert bench_cli.QUICK.idle_modes == ("launched",)
    asked: list[dict] = []

    def run_modes(work: Path, **kwargs: object) -> dict:
        asked.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench_cli.idle, "run_modes", run_modes)
    plan = bench_cli.Plan(**{**vars(bench_cli.QUICK), "real": True})
    monkeypatch.setattr(bench_cli, "real_bed", lambda *a, **k: pytest.fail("the beds are not this test's"))
    monkeypatch.setattr(bench_cli, "_with_bed", lambda start, work: None)
    with pytest.raises(RuntimeError, match="stop here"):
        bench_cli.run_bench(plan, tmp_path, "llama-direct bench --quick")
    assert asked[0]["modes"] == ("launched",) and asked[0]["before"] is None


def test_the_fleet_modes_redis_is_private_and_ticks_once_a_second(redis_server: object, tmp_path: Path) -> None:
    """`redis_server` only to skip where none is installed. At its default 10 Hz an idle redis-server
    spends about 1.9 ms/s on its own timer, which would hide what the stack adds to it."""
    from broker.shared_state import sync_client

    redis, url = idle.start_redis(tmp_path)
    try:
        assert url == f"unix://{tmp_path / 'redis.sock'}"
        assert sync_client(url).config_get("hz") == {"hz": "1"}
        assert (tmp_path / "redis.sock").stat().st_mode & 0o777 == 0o700
    finally:
        redis.stop()
    assert not redis.alive()
