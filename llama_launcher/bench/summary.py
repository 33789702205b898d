"""Pure reduction of the raw rounds into the figures the report shows, and the targets P1–P6.

A ratio against raw llama-server is taken per repetition (the lane's round divided by raw's
round of the same repetition, which ran next to it), then the median over repetitions: drift
between repetitions cancels, which a ratio of two medians would not guarantee.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llama_launcher.bench.stats import median, per_thousand, percentile, ratio

LANE_PROCESSES = {"raw": (), "direct": ("gate",), "baseline": ("broker", "gate"), "studio": ("studio",),
                  "relay": ("relay",)}
"""The processes whose CPU a lane adds on top of the upstream's."""


def round_rates(found: dict[str, Any]) -> tuple[float, float]:
    """(tokens/s, chunks/s) of one round: what its streams delivered over its wall time."""
    ok = [s for s in found["streams"] if s["ok"]]
    wall = found["wall_s"]
    if not ok or wall <= 0:
        return 0.0, 0.0
    return sum(s["tokens"] for s in ok) / wall, sum(s["chunks"] for s in ok) / wall


def summarize(rounds: Iterable[dict[str, Any]], *, base_lane: str = "raw") -> list[dict[str, Any]]:
    """One row per (upstream, concurrency, lane), in the order first seen."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for found in rounds:
        groups[(found.get("upstream", ""), found["concurrency"], found["lane"])].append(found)
    rows = []
    for (upstream, concurrency, lane), found_rounds in groups.items():
        base = {r.get("rep"): r for r in groups.get((upstream, concurrency, base_lane), [])}
        rows.append(_row(upstream, concurrency, lane, found_rounds, base))
    return rows


def _row(upstream: str, concurrency: int, lane: str, rounds: list[dict[str, Any]],
         base: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    streams = [s for r in rounds for s in r["streams"]]
    ok = [s for s in streams if s["ok"]]
    rates = [round_rates(r) for r in rounds]
    token_ratios: list[float] = []
    chunk_ratios: list[float] = []
    for found, (tokens, chunks) in zip(rounds, rates, strict=True):
        paired = base.get(found.get("rep"))
        if paired is not None:
            base_tokens, base_chunks = round_rates(paired)
            for into, value, reference in ((token_ratios, tokens, base_tokens), (chunk_ratios, chunks, base_chunks)):
                found_ratio = ratio(value, reference)
                if found_ratio is not None:
                    into.append(found_ratio)
    ttfts = [s["ttft_s"] * 1000 for s in ok if s["ttft_s"] is not None]
    with_negotiation = [(s["ttft_s"] + s["negotiation_s"]) * 1000 for s in ok
                        if s["ttft_s"] is not None and s["negotiation_s"] is not None]
    chunks = sum(s["chunks"] for s in ok)
    lane_cpu = sum(r["cpu_s"].get(name, 0.0) for r in rounds for name in LANE_PROCESSES.get(lane, ()))
    return {
        "upstream": upstream,
        "concurrency": concurrency,
        "lane": lane,
        "rounds": len(rounds),
        "streams": len(streams),
        "errors": len(streams) - len(ok),
        "tokens_per_s": median([t for t, _ in rates]),
        "chunks_per_s": median([c for _, c in rates]),
        "tokens_ratio": median(token_ratios) if token_ratios else None,
        "chunks_ratio": median(chunk_ratios) if chunk_ratios else None,
        "ttft_p50_ms": percentile(ttfts, 50) if ttfts else None,
        "ttft_p99_ms": percentile(ttfts, 99) if ttfts else None,
        "ttft_with_negotiation_p50_ms": percentile(with_negotiation, 50) if with_negotiation else None,
        "lane_cpu_per_1k_chunks": per_thousand(lane_cpu, chunks) if LANE_PROCESSES.get(lane) else None,
        "upstream_cpu_per_1k_chunks": per_thousand(sum(r["cpu_s"].get("upstream", 0.0) for r in rounds), chunks),
        "client_cpu_per_1k_chunks": per_thousand(sum(r["cpu_s"].get("client", 0.0) for r in rounds), chunks),
    }


def find_row(rows: Iterable[dict[str, Any]], upstream: str, concurrency: int, lane: str) -> dict[str, Any] | None:
    return next((r for r in rows if (r["upstream"], r["concurrency"], r["lane"]) == (upstream, concurrency, lane)),
                None)


def app_load_summary(load: dict[str, Any]) -> dict[str, Any]:
    """Per lane: tokens/s unloaded and loaded (medians), loaded/unloaded, and loaded/raw-loaded."""
    lanes: dict[str, dict[str, Any]] = {}
    phases = load["rounds"]
    for phase in ("unloaded", "loaded"):
        for found in phases.get(phase, []):
            entry = lanes.setdefault(found["lane"], {"unloaded": [], "loaded": [], "ttft_loaded": []})
            entry[phase].append(round_rates(found)[0])
            if phase == "loaded":
                entry["ttft_loaded"] += [s["ttft_s"] * 1000 for s in found["streams"] if s["ok"] and s["ttft_s"]]
    out: dict[str, Any] = {}
    raw_loaded = median(lanes["raw"]["loaded"]) if lanes.get("raw", {}).get("loaded") else None
    for lane, entry in lanes.items():
        unloaded = median(entry["unloaded"]) if entry["unloaded"] else None
        loaded = median(entry["loaded"]) if entry["loaded"] else None
        out[lane] = {
            "unloaded_tokens_per_s": unloaded,
            "loaded_tokens_per_s": loaded,
            "loaded_over_unloaded": ratio(loaded, unloaded),
            "loaded_over_raw_loaded": ratio(loaded, raw_loaded),
            "loaded_ttft_p99_ms": percentile(entry["ttft_loaded"], 99) if entry["ttft_loaded"] else None,
        }
    return out


@dataclass(frozen=True)
class Verdict:
    target: str
    goal: str
    measured: str
    passed: bool | None
    """None: not measured in this run."""


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """P1–P6 from the issue, each with the figure measured and PASS/MISS (None: not measured)."""
    rows = results.get("rows", [])
    found: list[Verdict] = []

    p1 = [(r["concurrency"], r["tokens_ratio"]) for r in rows
          if r["upstream"] == "real" and r["lane"] == "direct" and r["tokens_ratio"] is not None]
    found.append(Verdict(
        "P1", "real llama-server through the lane: tokens/s ≥ 0.99× raw",
        ", ".join(f"{ratio_:.3f}× at {c}" for c, ratio_ in p1) or "not measured",
        all(ratio_ >= 0.99 for _, ratio_ in p1) if p1 else None,
    ))

    p2 = [(c, (find_row(rows, "synthetic", c, "direct") or {}).get("tokens_ratio")) for c in (1, 64)]
    p2_known = [(c, v) for c, v in p2 if v is not None]
    found.append(Verdict(
        "P2", "synthetic max-rate upstream through the gate ≥ 0.95× raw, at 1 and 64 streams",
        ", ".join(f"{v:.3f}× at {c}" for c, v in p2_known) or "not measured",
        all(v >= 0.95 for _, v in p2_known) if len(p2_known) == 2 else None,
    ))

    first = results.get("first_token", {})
    p3 = None
    if first.get("direct", {}).get("p50_ms") is not None and first.get("raw", {}).get("p50_ms") is not None:
        p3 = (first["direct"]["p50_ms"] - first["raw"]["p50_ms"], first["direct"]["p99_ms"] - first["raw"]["p99_ms"])
    real = _real_first_token(results)
    real_text = (f"; real model: {real[0]:+.2f} ms p50" + (f", {real[1]:+.2f} ms p99" if real[1] is not None else "")
                 if real else "")
    found.append(Verdict(
        "P3", "added TTFT ≤ 0.5 ms p50 and ≤ 2 ms p99, against raw (negotiation apart), synthetic and real",
        f"synthetic: {p3[0]:+.2f} ms p50, {p3[1]:+.2f} ms p99{real_text}" if p3 else "not measured",
        _p3_passed(p3, real),
    ))

    load = results.get("app_load_summary", {}).get("direct")
    p4 = load["loaded_over_unloaded"] if load else None
    found.append(Verdict(
        "P4", "under app load, direct-lane tokens/s ≥ 0.98× unloaded",
        f"{_fmt(p4, '.3f')}× (raw under the same load: "
        f"{_fmt(results.get('app_load_summary', {}).get('raw', {}).get('loaded_over_unloaded'), '.3f')}×)"
        if p4 is not None else "not measured",
        p4 >= 0.98 if p4 is not None else None,
    ))

    negotiation = results.get("negotiation")
    verification = results.get("verification", {})
    es256, eddsa = verification.get("ES256"), verification.get("EdDSA")
    if negotiation is not None and es256 is not None and eddsa is not None:
        found.append(Verdict(
            "P5", "negotiation ≤ 2 ms p50, ES256 verification ≤ 100 µs",
            f"{negotiation['p50_ms']:.2f} ms p50 (p99 {negotiation['p99_ms']:.2f} ms); "
            f"ES256 verify {es256['us_per_verify']:.0f} µs"
            + (f" ({es256['us_primitive']:.0f} µs OpenSSL's P-256 check, {es256['us_overhead']:.0f} µs ours)"
               if "us_primitive" in es256 else "")
            + f"; EdDSA {eddsa['us_per_verify']:.0f} µs "
            f"({eddsa.get('us_primitive', 0):.0f} µs libsodium's Ed25519 check, "
            f"{eddsa.get('us_overhead', 0):.0f} µs ours"
            + (f"; OpenSSL's check {eddsa['us_primitive_openssl']:.0f} µs)"
               if "us_primitive_openssl" in eddsa else ")"),
            negotiation["p50_ms"] <= 2.0 and es256["us_per_verify"] <= 100,
        ))
    else:
        found.append(Verdict("P5", "negotiation ≤ 2 ms p50, ES256 verification ≤ 100 µs", "not measured", None))

    memory = results.get("memory")
    per_stream = memory.get("kib_per_stream") if memory else None
    full = memory is not None and memory["held"] >= 1000
    found.append(Verdict(
        "P6", "1,000 concurrent streams in the gate at ≤ 20 KB RSS each",
        f"{_fmt(per_stream, '.1f')} KiB per stream with {memory['held']} held" if memory else "not measured",
        (per_stream is not None and per_stream <= 20 * 1000 / 1024) if full else None,
    ))
    found += _request_verdicts(results)
    return found


def _p3_passed(synthetic: tuple[float, float] | None, real: tuple[float, float | None] | None) -> bool | None:
    """A miss on either upstream is a miss; a pass needs both measured."""
    met = [p50 <= 0.5 and (p99 is None or p99 <= 2.0) for p50, p99 in filter(None, (synthetic, real))]
    if not all(met):
        return False
    return True if len(met) == 2 else None


def _real_first_token(results: dict[str, Any]) -> tuple[float, float | None] | None:
    """P3 on the real model: the one-token rounds (`first_token_real`, or the many-models run's
    single-model rounds), never the throughput rounds' first tokens, which carry a 64-token stream's load."""
    real = results.get("first_token_real", {})
    if real.get("direct", {}).get("p50_ms") is not None and real.get("raw", {}).get("p50_ms") is not None:
        return (real["direct"]["p50_ms"] - real["raw"]["p50_ms"], real["direct"]["p99_ms"] - real["raw"]["p99_ms"])
    single = results.get("many_models", {}).get("single", {})
    if single.get("added_p50_ms") is not None:
        return single["added_p50_ms"], single.get("added_p99_ms")
    return None


def _request_verdicts(results: dict[str, Any]) -> list[Verdict]:
    """P7 (gate CPU per lane request) and the idle floor, where the run measured them."""
    cost = results.get("gate_cost", {})
    real, synthetic = cost.get("real"), cost.get("synthetic")
    parts = []
    for entry, how in ((real, "real (kept-alive)"), (synthetic, "synthetic (Connection: close)")):
        if entry:
            floor = entry.get("relay", {}).get("ms_per_request")
            parts.append(f"{entry['gate_ms_per_request']:.2f} ms {how}"
                         + (f", the bare relay {floor:.2f} ms (Connection: close)" if floor is not None else ""))
    found = [Verdict("P7", "gate CPU per lane request ≤ 0.5 ms (real model, kept-alive client)",
                     "; ".join(parts) or "not measured",
                     real["gate_ms_per_request"] <= 0.5 if real else None)]
    idle = results.get("idle_cpu")
    modes = {mode: names for mode, names in results.get("idle_modes", {}).get("ms_per_s", {}).items()
             if not mode.startswith("before:")}
    if modes:
        found.append(_idle_modes_verdict(modes, idle))
        return found
    found.append(Verdict("Idle", "gate and broker each ≤ 1 ms of CPU per second when idle",
                         ", ".join(f"{name} {ms:.2f} ms/s" for name, ms in idle.items()) if idle else "not measured",
                         all(ms <= 1.0 for ms in idle.values()) if idle else None))
    return found


def _idle_modes_verdict(modes: dict[str, dict[str, float]], synthetic: dict[str, float] | None) -> Verdict:
    """Issue 24's target: every process of a stack, in each mode, and the synthetic bed's gate and broker."""
    parts = []
    for mode, names in modes.items():
        busiest = max(names, key=lambda name: names[name])
        parts.append(f"{mode}: at most {names[busiest]:.2f} ms/s ({busiest})")
    if synthetic:
        parts.append("synthetic: " + ", ".join(f"{name} {ms:.2f} ms/s" for name, ms in synthetic.items()))
    values = [ms for names in modes.values() for ms in names.values()] + list((synthetic or {}).values())
    return Verdict("Idle", "every process of a stack ≤ 1 ms of CPU per second when idle, in each mode",
                   "; ".join(parts), all(ms <= 1.0 for ms in values))


ANCHOR_LANES = {"relay": "relay", "direct": "gate", "before": "before_gate", "haproxy": "haproxy"}
"""first_token's lanes in the anchor table, each with the process whose CPU is its own."""


def anchor(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The Python gate beside HAProxy in its place and the bare relay, from one `first_token` run.

    Added time to first token over raw (p50, p99) and the CPU per request of the lane's own process
    (idle background subtracted). Empty when the run measured no HAProxy lane.
    """
    first = results.get("first_token", {})
    raw = first.get("raw", {})
    if "haproxy" not in first or raw.get("p50_ms") is None:
        return []
    rows = []
    for lane, process in ANCHOR_LANES.items():
        entry = first.get(lane)
        if not entry or entry.get("p50_ms") is None:
            continue
        rows.append({
            "lane": lane, "count": entry["count"],
            "added_p50_ms": entry["p50_ms"] - raw["p50_ms"], "added_p99_ms": entry["p99_ms"] - raw["p99_ms"],
            "cpu_ms_per_request": entry.get("cpu_ms_per_request_by_process", {}).get(process, 0.0),
        })
    return rows
