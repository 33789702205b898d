"""Reducing rounds to rows, pairing ratios by repetition, and judging the targets P1–P6."""

from __future__ import annotations

from typing import Any

import pytest

from llama_launcher.bench.summary import (
    app_load_summary,
    find_row,
    round_rates,
    summarize,
    verdicts,
)


def _stream(tokens: int, ttft: float, *, ok: bool = True, negotiation: float | None = None) -> dict[str, Any]:
    return {"ok": ok, "status": 200 if ok else 0, "ttft_s": ttft, "duration_s": 1.0, "started": 0.0, "ended": 1.0,
            "chunks": tokens + 2, "tokens": tokens, "negotiation_s": negotiation}


def _round(lane: str, rep: int, wall: float, *, upstream: str = "real", concurrency: int = 1, tokens: int = 100,
           ttft: float = 0.01, cpu: dict[str, float] | None = None, **stream: Any) -> dict[str, Any]:
    return {"lane": lane, "concurrency": concurrency, "upstream": upstream, "rep": rep, "wall_s": wall,
            "cpu_s": cpu or {}, "streams": [_stream(tokens, ttft, **stream) for _ in range(concurrency)]}


def test_round_rates_count_only_whole_streams() -> None:
    found = _round("raw", 0, 2.0, concurrency=2)
    found["streams"][1]["ok"] = False
    assert round_rates(found) == (50.0, 51.0)


def test_round_rates_of_a_round_with_no_stream_are_zero() -> None:
    assert round_rates(_round("raw", 0, 1.0, ok=False)) == (0.0, 0.0)


def test_ratio_pairs_each_repetition_with_raw_of_the_same_repetition() -> None:
    rounds = [
        _round("raw", 0, 1.0), _round("direct", 0, 1.0 / 0.98),
        _round("raw", 1, 2.0), _round("direct", 1, 2.0 / 0.99),   # a slow repetition for both lanes
        _round("raw", 2, 1.0), _round("direct", 2, 1.0 / 0.97),
    ]
    row = find_row(summarize(rounds), "real", 1, "direct")
    assert row is not None
    assert row["tokens_ratio"] == pytest.approx(0.98)
    assert row["tokens_per_s"] == pytest.approx(97.0)  # median of 98, 49.5 and 97
    assert row["rounds"] == 3 and row["errors"] == 0


def test_ttft_percentiles_and_negotiation_are_in_milliseconds() -> None:
    rounds = [_round("direct", 0, 1.0, ttft=0.002, negotiation=0.001), _round("direct", 1, 1.0, ttft=0.004,
                                                                                negotiation=0.001)]
    (row,) = summarize(rounds)
    assert row["ttft_p50_ms"] == pytest.approx(3.0)
    assert row["ttft_with_negotiation_p50_ms"] == pytest.approx(4.0)
    assert row["tokens_ratio"] is None


def test_lane_cpu_counts_the_lanes_own_processes_per_thousand_chunks() -> None:
    cpu = {"gate": 0.2, "broker": 0.3, "upstream": 1.0, "client": 0.1}
    rows = summarize([_round("direct", 0, 1.0, tokens=998, cpu=cpu), _round("baseline", 0, 1.0, tokens=998, cpu=cpu),
                      _round("raw", 0, 1.0, tokens=998, cpu=cpu)])
    assert find_row(rows, "real", 1, "direct")["lane_cpu_per_1k_chunks"] == pytest.approx(0.2)  # type: ignore[index]
    assert find_row(rows, "real", 1, "baseline")["lane_cpu_per_1k_chunks"] == pytest.approx(0.5)  # type: ignore[index]
    raw = find_row(rows, "real", 1, "raw")
    assert raw is not None and raw["lane_cpu_per_1k_chunks"] is None
    assert raw["upstream_cpu_per_1k_chunks"] == pytest.approx(1.0)


def test_app_load_summary_compares_loaded_with_unloaded_and_with_raw_loaded() -> None:
    load = {"rounds": {
        "unloaded": [_round("raw", 0, 1.0), _round("direct", 0, 1.0)],
        "loaded": [_round("raw", 0, 1.25), _round("direct", 0, 1.0 / 0.75)],
    }}
    found = app_load_summary(load)
    assert found["direct"]["loaded_over_unloaded"] == pytest.approx(0.75)
    assert found["direct"]["loaded_over_raw_loaded"] == pytest.approx(0.9375)
    assert found["raw"]["loaded_over_unloaded"] == pytest.approx(0.8)


def _results(direct_real: float, direct_synthetic: float, *, held: int = 1000, kib: float = 8.0) -> dict[str, Any]:
    rounds = []
    for upstream, ratio_ in (("real", direct_real), ("synthetic", direct_synthetic)):
        for concurrency in (1, 64):
            rounds += [_round("raw", 0, 1.0, upstream=upstream, concurrency=concurrency, ttft=0.010),
                       _round("direct", 0, 1.0 / ratio_, upstream=upstream, concurrency=concurrency, ttft=0.0103)]
    return {
        "rows": summarize(rounds),
        "first_token": {"raw": {"p50_ms": 0.2, "p99_ms": 0.5}, "direct": {"p50_ms": 0.6, "p99_ms": 2.0}},
        "first_token_real": {"raw": {"p50_ms": 17.0, "p99_ms": 30.0}, "direct": {"p50_ms": 17.25, "p99_ms": 31.0}},
        "negotiation": {"count": 10, "p50_ms": 1.5, "p99_ms": 3.0},
        "verification": {"EdDSA": {"count": 10, "us_per_verify": 80.0, "us_primitive": 60.0, "us_overhead": 20.0,
                                   "us_primitive_openssl": 120.0},
                         "ES256": {"count": 10, "us_per_verify": 90.0, "us_primitive": 70.0, "us_overhead": 20.0}},
        "memory": {"held": held, "kib_per_stream": kib},
        "gate_cost": {"real": {"gate_ms_per_request": 0.45, "kept_alive": True, "relay": {"ms_per_request": 0.3}},
                      "synthetic": {"gate_ms_per_request": 0.40, "kept_alive": False}},
        "idle_cpu": {"gate": 0.4, "broker": 0.9},
        "app_load_summary": {"direct": {"loaded_over_unloaded": 0.99}, "raw": {"loaded_over_unloaded": 0.97}},
    }


def test_verdicts_pass_when_every_figure_meets_its_target() -> None:
    found = {v.target: v for v in verdicts(_results(0.995, 0.96))}
    assert [found[t].passed for t in ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "Idle")] == [True] * 8
    assert found["P5"].measured == ("1.50 ms p50 (p99 3.00 ms); ES256 verify 90 µs (70 µs OpenSSL's P-256 check, "
                                    "20 µs ours); EdDSA 80 µs "
                                    "(60 µs libsodium's Ed25519 check, 20 µs ours; OpenSSL's check 120 µs)")
    assert found["P7"].measured == ("0.45 ms real (kept-alive), the bare relay 0.30 ms (Connection: close); "
                                    "0.40 ms synthetic (Connection: close)")
    assert found["Idle"].measured == "gate 0.40 ms/s, broker 0.90 ms/s"
    assert found["P1"].measured == "0.995× at 1, 0.995× at 64"
    assert found["P3"].measured == "synthetic: +0.40 ms p50, +1.50 ms p99; real model: +0.25 ms p50, +1.00 ms p99"


def test_p3_takes_the_real_models_one_token_rounds_and_needs_both_upstreams() -> None:
    results = _results(0.995, 0.96)
    results["first_token_real"]["direct"]["p50_ms"] = 17.75  # +0.75 ms on the real model alone: a miss
    assert {v.target: v for v in verdicts(results)}["P3"].passed is False
    del results["first_token_real"]
    results["many_models"] = {"single": {"added_p50_ms": -0.1, "added_p99_ms": 1.5}}  # the many-models rounds
    found = {v.target: v for v in verdicts(results)}["P3"]
    assert found.passed is True and found.measured.endswith("real model: -0.10 ms p50, +1.50 ms p99")
    del results["many_models"]
    assert {v.target: v for v in verdicts(results)}["P3"].passed is None  # the real model not measured


def test_verdicts_miss_honestly() -> None:
    results = _results(0.985, 0.90, kib=25.0)
    results["first_token"]["direct"]["p99_ms"] = 2.6
    results["verification"]["ES256"]["us_per_verify"] = 140.0
    results["gate_cost"]["real"]["gate_ms_per_request"] = 1.2
    results["idle_cpu"]["gate"] = 11.0
    found = {v.target: v for v in verdicts(results)}
    assert [found[t].passed for t in ("P1", "P2", "P3", "P5", "P6", "P7", "Idle")] == [False] * 7
    assert found["P6"].measured == "25.0 KiB per stream with 1000 held"


def test_memory_with_fewer_than_1000_streams_is_not_a_verdict() -> None:
    found = {v.target: v for v in verdicts(_results(0.995, 0.96, held=20))}
    assert found["P6"].passed is None


def test_nothing_measured_is_said_so() -> None:
    found = verdicts({})
    assert [v.passed for v in found] == [None] * 8
    assert all(v.measured == "not measured" for v in found)
