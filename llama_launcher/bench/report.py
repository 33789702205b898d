"""The benchmark's outputs: a markdown table of ratios against raw llama-server, a PNG plot, the raw JSON.

`render_markdown` is pure (results in, text out) so its layout is unit-tested; `write_outputs`
writes the three files. The plot uses matplotlib's Agg backend: no display is ever needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llama_launcher.bench import before, fleet, idle, models, routes
from llama_launcher.bench.machine import one_line
from llama_launcher.bench.summary import Verdict, anchor, verdicts

LABELS = {
    "raw": "(a) raw llama-server",
    "direct": "(b) direct lane (gate)",
    "baseline": "(c) broker baseline",
    "studio": "(d) Studio-style proxy",
    "relay": "bare relay (floor)",
    "before": "(b) direct lane, the code before (`--before`)",
    "budgeted": "(b) direct lane, a user with a token budget",
    "haproxy": "HAProxy 2.6 in the gate's place (ES256)",
}
UPSTREAMS = {"real": "real llama-server (SmolLM2-135M Q4_1)", "synthetic": "synthetic upstream, max rate"}
FILES = {"json": "bench.json", "markdown": "bench.md", "plot": "bench.png"}


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else format(value, spec) + suffix


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "**MISS**", None: "not measured"}[passed]


def lane_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| upstream | streams | lane | tokens/s | × raw | chunks/s | TTFT p50 | TTFT p99 "
        "| lane CPU s / 1k chunks | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['upstream']} | {row['concurrency']} | {LABELS.get(row['lane'], row['lane'])} "
            f"| {_num(row['tokens_per_s'], ',.0f')} | {_num(row['tokens_ratio'], '.3f', '×')} "
            f"| {_num(row['chunks_per_s'], ',.0f')} | {_num(row['ttft_p50_ms'], '.2f', ' ms')} "
            f"| {_num(row['ttft_p99_ms'], '.2f', ' ms')} | {_num(row['lane_cpu_per_1k_chunks'], '.3f')} "
            f"| {row['errors']} |"
        )
    return lines


def target_table(found: list[Verdict]) -> list[str]:
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    lines += [f"| {v.target} | {v.goal} | {v.measured} | {_verdict(v.passed)} |" for v in found]
    return lines


def load_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| lane | unloaded tokens/s | loaded tokens/s | loaded ÷ unloaded | loaded ÷ raw loaded "
             "| TTFT p99 loaded |", "|---|---:|---:|---:|---:|---:|"]
    for lane, entry in summary.items():
        lines.append(
            f"| {LABELS.get(lane, lane)} | {_num(entry['unloaded_tokens_per_s'], ',.0f')} "
            f"| {_num(entry['loaded_tokens_per_s'], ',.0f')} | {_num(entry['loaded_over_unloaded'], '.3f', '×')} "
            f"| {_num(entry['loaded_over_raw_loaded'], '.3f', '×')} "
            f"| {_num(entry['loaded_ttft_p99_ms'], '.2f', ' ms')} |"
        )
    return lines


def _cpu_split(entry: dict[str, Any]) -> str:
    """CPU per request, split by process where the run recorded it (the broker's share is the negotiation)."""
    split = entry.get("cpu_ms_per_request_by_process")
    if not split:
        return f"{entry['cpu_ms_per_request']:.2f} ms of lane CPU per request"
    return " + ".join(f"{ms:.2f} ms {name}" for name, ms in split.items()) + " CPU per request"


def _budgeted_note(entry: dict[str, Any]) -> str:
    """P7's rounds of a user with a token budget beside the owner's: what settlement adds to a request,
    and what reservation adds to a negotiation (gate and broker CPU per grant, the owner's first)."""
    budgeted = entry.get("budgeted")
    if budgeted is None:
        return ""
    owner, user = entry.get("negotiation_ms_per_request", {}), budgeted.get("negotiation_ms_per_request", {})
    return (f"; a user with a token budget (each grant reserved, each end settled by the gate's report), in "
            f"rounds between: {budgeted['gate_ms_per_request']:.3f} ms (the broker: "
            f"{budgeted['broker_ms_per_request']:.3f} ms); a negotiation's CPU, owner then that user: gate "
            f"{_num(owner.get('gate'), '.3f')} / {_num(user.get('gate'), '.3f')} ms, broker "
            f"{_num(owner.get('broker'), '.3f')} / {_num(user.get('broker'), '.3f')} ms")


def render_markdown(results: dict[str, Any]) -> str:
    """The report: targets first, then every lane's figures, then the single-number measurements."""
    lines = [f"Machine: {one_line(results['machine'])}. Run: `{results['command']}`, "
             f"{results['duration_s']:.0f} s.", ""]
    lines += target_table(verdicts(results))
    lines += ["", "Throughput and latency, medians of interleaved repetitions "
                  "(× raw: the median of per-repetition ratios):", ""]
    lines += lane_table(results.get("rows", []))
    notes = []
    first = results.get("first_token", {})
    if first:
        parts = [f"{LABELS.get(lane, lane)} {_num(entry['p50_ms'], '.2f')} ms p50, "
                 f"{_num(entry['p99_ms'], '.2f')} ms p99, {_cpu_split(entry)}"
                 for lane, entry in first.items()]
        notes.append("- Time to first token alone (one-token streams one after another, synthetic upstream): "
                     + "; ".join(parts) + ".")
    real = results.get("first_token_real", {})
    if real:
        notes.append("- Time to first token alone, real model: " + "; ".join(
            f"{LABELS.get(lane, lane)} {_num(entry['p50_ms'], '.2f')} ms p50, {_num(entry['p99_ms'], '.2f')} ms p99"
            for lane, entry in real.items()) + ".")
    negotiation = results.get("negotiation")
    if negotiation:
        notes.append(f"- Negotiation (`POST /direct-stream` through the public port, {negotiation['count']} in a row): "
                     f"{negotiation['p50_ms']:.2f} ms p50, {negotiation['p99_ms']:.2f} ms p99.")
    for algorithm, entry in results.get("verification", {}).items():
        primitive = (f" ({entry['us_primitive']:.0f} µs the signature check alone, "
                     f"{entry['us_overhead']:.0f} µs the rest)" if "us_primitive" in entry else "")
        if algorithm == "EdDSA" and "us_primitive_openssl" in entry:
            primitive += (f"; the Ed25519 check is libsodium's, {entry['us_primitive_openssl']:.0f} µs "
                          "through OpenSSL in the same run")
        notes.append(f"- Verification (`llama_direct.tokens.verify`, {algorithm}): "
                     f"{entry['us_per_verify']:.0f} µs per token{primitive}.")
    for upstream, entry in results.get("gate_cost", {}).items():
        how = "one kept-alive connection" if entry["kept_alive"] else "`Connection: close`"
        notes.append(f"- Gate CPU per lane request (P7, {upstream} upstream, {how}, {entry['count']} requests × "
                     f"{len(entry['rounds'])} rounds, tokens negotiated first, idle background subtracted): "
                     f"{entry['gate_ms_per_request']:.3f} ms "
                     f"(the broker meanwhile: {entry['broker_ms_per_request']:.3f} ms)"
                     + (f"; the code before: {entry['before']['gate_ms_per_request']:.3f} ms "
                        f"(its broker: {entry['before']['broker_ms_per_request']:.3f} ms)" if "before" in entry else "")
                     + (f"; the bare relay on the same requests (`Connection: close`), in rounds between: "
                        f"{entry['relay']['ms_per_request']:.3f} ms" if "relay" in entry else "")
                     + _budgeted_note(entry) + ".")
    floor = results.get("idle_cpu")
    if floor:
        notes.append("- Idle (nothing asked): " + ", ".join(f"{name} {ms:.2f} ms of CPU per second"
                                                           for name, ms in floor.items()) + ".")
    memory = results.get("memory")
    if memory:
        notes.append(f"- Gate memory: {memory['held']} slow streams held through the lane "
                     f"({memory['failed']} failed to open): RSS {memory['rss_before_kib']:,.0f} → "
                     f"{memory['rss_held_kib']:,.0f} KiB, {_num(memory['kib_per_stream'], '.1f')} KiB per stream.")
    if notes:
        lines += ["", *notes]
    if results.get("idle_modes"):
        lines += ["", *idle.render(results["idle_modes"])]
    lines += anchor_table(results)
    lines += before.render(results)
    many = results.get("many_models")
    if many:
        lines += ["", "Many models: the lane against raw llama-server, single-model upstream beside a router:", ""]
        lines += models.render(many)
    if results.get("fleet"):
        lines += ["", *fleet.render(results["fleet"])]
    if results.get("routes"):
        lines += ["", "One streaming route besides chat, on the real model (issue 27): direct against raw for "
                      "chat and Responses, interleaved (median of per-repetition ratios):", "",
                  routes.render(results["routes"])]
    load = results.get("app_load")
    if load:
        lines += ["", f"App under load: {load['concurrency']} streams at {load['pace']:g} tokens/s each, while a "
                      f"separate process holds {load['slow']} slow baseline streams and runs {load['hammers']} "
                      f"back-to-back negotiation loops against the broker (broker busy "
                      f"{load['broker_cpu_share']:.0%} of a core):", ""]
        lines += load_table(results.get("app_load_summary", {}))
    return "\n".join(lines) + "\n"


def anchor_table(results: dict[str, Any]) -> list[str]:
    """HAProxy beside the Python gate (issue 18's anchor row), or the line saying why it is missing."""
    skipped = results.get("haproxy_anchor", {}).get("skipped")
    if skipped:
        return ["", f"Anchor: {skipped}."]
    rows = anchor(results)
    if not rows:
        return []
    lines = ["", "Anchor: the same one-token requests, interleaved, in front of the same synthetic upstream "
                 "(`Connection: close`; CPU of the lane's own process per request, idle background subtracted):", "",
             "| in front of the upstream | requests | added TTFT p50 | added TTFT p99 | CPU per request |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {LABELS.get(row['lane'], row['lane'])} | {row['count']} | {row['added_p50_ms']:+.2f} ms "
                     f"| {row['added_p99_ms']:+.2f} ms | {row['cpu_ms_per_request']:.3f} ms |")
    return lines


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.get("rows", [])
    upstreams = [u for u in UPSTREAMS if any(r["upstream"] == u for r in rows)]
    figure, axes = plt.subplots(1, max(len(upstreams), 1), figsize=(6.5 * max(len(upstreams), 1), 4.5),
                                squeeze=False)
    for axis, upstream in zip(axes[0], upstreams, strict=False):
        mine = [r for r in rows if r["upstream"] == upstream]
        levels = sorted({r["concurrency"] for r in mine})
        lanes = [lane for lane in LABELS if any(r["lane"] == lane for r in mine)]
        width = 0.8 / max(len(lanes), 1)
        for index, lane in enumerate(lanes):
            values = [next((r["tokens_ratio"] or 0.0 for r in mine if r["lane"] == lane and r["concurrency"] == c),
                           0.0) for c in levels]
            positions = [i + (index - (len(lanes) - 1) / 2) * width for i in range(len(levels))]
            axis.bar(positions, values, width, label=LABELS[lane])
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.axhline(0.99 if upstream == "real" else 0.95, color="red", linewidth=0.8, linestyle="--",
                     label="target for (b)")
        axis.set_xticks(range(len(levels)), [f"{c} stream{'s' if c > 1 else ''}" for c in levels])
        axis.set_ylabel("tokens/s ÷ raw llama-server")
        axis.set_title(UPSTREAMS[upstream])
        axis.set_ylim(0, max(1.15, *(r["tokens_ratio"] or 0.0 for r in mine)) * 1.05)
        axis.legend(fontsize=7, loc="lower left")
    figure.suptitle(f"llama-direct bench: {one_line(results['machine'])}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in FILES.items()}
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["markdown"].write_text(render_markdown(results))
    write_plot(results, paths["plot"])
    return paths
