"""The report's markdown layout, and the three files it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_launcher.bench.report import (
    anchor_table,
    lane_table,
    load_table,
    render_markdown,
    target_table,
    write_outputs,
)
from llama_launcher.bench.summary import Verdict

MACHINE = {"cpu": "Test CPU", "cores": 2, "memory_gib": 8.0, "kernel": "6.1", "python": "3.11.7"}


def _row(lane: str, tokens: float, ratio_: float | None, cpu: float | None) -> dict[str, Any]:
    return {"upstream": "real", "concurrency": 1, "lane": lane, "tokens_per_s": tokens, "tokens_ratio": ratio_,
            "chunks_per_s": tokens + 1, "ttft_p50_ms": 10.0, "ttft_p99_ms": 12.5, "lane_cpu_per_1k_chunks": cpu,
            "errors": 0}


def _results() -> dict[str, Any]:
    return {
        "machine": MACHINE,
        "command": "llama-direct bench --quick",
        "duration_s": 42.0,
        "rows": [_row("raw", 110.0, 1.0, None), _row("direct", 109.0, 0.991, 0.0123)],
        "negotiation": {"count": 10, "p50_ms": 1.25, "p99_ms": 2.5},
        "verification": {"EdDSA": {"count": 5, "us_per_verify": 90.4}},
    }


def test_lane_table_shows_ratios_and_dashes_for_missing_figures() -> None:
    lines = lane_table([_row("raw", 110.0, 1.0, None), _row("direct", 109.0, 0.991, 0.0123)])
    assert lines[2] == "| real | 1 | (a) raw llama-server | 110 | 1.000× | 111 | 10.00 ms | 12.50 ms | – | 0 |"
    assert lines[3] == "| real | 1 | (b) direct lane (gate) | 109 | 0.991× | 110 | 10.00 ms | 12.50 ms | 0.012 | 0 |"


def test_target_table_marks_misses_in_bold() -> None:
    lines = target_table([Verdict("P1", "goal", "0.98×", False), Verdict("P2", "goal", "1.0×", True),
                          Verdict("P6", "goal", "not measured", None)])
    assert lines[2:] == ["| P1 | goal | 0.98× | **MISS** |", "| P2 | goal | 1.0× | PASS |",
                         "| P6 | goal | not measured | not measured |"]


def test_load_table_row() -> None:
    (line,) = load_table({"direct": {"unloaded_tokens_per_s": 4000.0, "loaded_tokens_per_s": 3960.0,
                                     "loaded_over_unloaded": 0.99, "loaded_over_raw_loaded": 1.0,
                                     "loaded_ttft_p99_ms": 1.5}})[2:]
    assert line == "| (b) direct lane (gate) | 4,000 | 3,960 | 0.990× | 1.000× | 1.50 ms |"


def test_markdown_states_machine_command_targets_and_single_numbers() -> None:
    text = render_markdown(_results())
    assert text.startswith(
        "Machine: 2 cores (Test CPU), 8 GiB RAM, Linux 6.1, Python 3.11.7. Run: `llama-direct bench --quick`, 42 s.\n"
    )
    assert "| P1 | real llama-server through the lane: tokens/s ≥ 0.99× raw | 0.991× at 1 | PASS |" in text
    assert "| P6 | 1,000 concurrent streams in the gate at ≤ 20 KB RSS each | not measured | not measured |" in text
    negotiation = "- Negotiation (`POST /direct-stream` through the public port, 10 in a row): 1.25 ms p50, 2.50 ms p99"
    assert negotiation in text
    assert "- Verification (`llama_direct.tokens.verify`, EdDSA): 90 µs per token." in text


def test_write_outputs_writes_json_markdown_and_a_png(tmp_path: Path) -> None:
    paths = write_outputs(_results(), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.md", "bench.png"]
    assert paths["plot"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert paths["markdown"].read_text() == render_markdown(_results())


def test_first_token_cpu_is_split_by_process_when_recorded() -> None:
    from llama_launcher.bench.report import _cpu_split

    assert _cpu_split({"cpu_ms_per_request": 3.0, "cpu_ms_per_request_by_process": {"gate": 1.25, "broker": 1.75}}) \
        == "1.25 ms gate + 1.75 ms broker CPU per request"
    assert _cpu_split({"cpu_ms_per_request": 0.5}) == "0.50 ms of lane CPU per request"


def _first_token() -> dict[str, Any]:
    def lane(p50: float, p99: float, by_process: dict[str, float]) -> dict[str, Any]:
        return {"count": 300, "p50_ms": p50, "p99_ms": p99, "cpu_ms_per_request": sum(by_process.values()),
                "cpu_ms_per_request_by_process": by_process}

    return {"raw": lane(0.5, 1.0, {}), "relay": lane(0.75, 1.5, {"relay": 0.3}),
            "direct": lane(1.5, 3.0, {"gate": 0.625, "broker": 0.05}),
            "haproxy": lane(0.875, 2.0, {"haproxy": 0.125, "gate": 0.01})}


def test_the_anchor_table_puts_haproxy_beside_the_gate_and_the_floor() -> None:
    lines = anchor_table({"first_token": _first_token()})
    assert lines[4:] == [
        "|---|---:|---:|---:|---:|",
        "| bare relay (floor) | 300 | +0.25 ms | +0.50 ms | 0.300 ms |",
        "| (b) direct lane (gate) | 300 | +1.00 ms | +2.00 ms | 0.625 ms |",
        "| HAProxy 2.6 in the gate's place (ES256) | 300 | +0.38 ms | +1.00 ms | 0.125 ms |",
    ]
    assert "| HAProxy 2.6" in render_markdown({**_results(), "first_token": _first_token()})


def test_a_run_without_haproxy_says_so_and_one_without_the_lane_shows_nothing() -> None:
    from llama_launcher.bench.haproxy_anchor import NOT_INSTALLED

    assert anchor_table({"haproxy_anchor": {"skipped": NOT_INSTALLED}}) == ["", f"Anchor: {NOT_INSTALLED}."]
    first = _first_token()
    del first["haproxy"]
    assert anchor_table({"first_token": first}) == []
