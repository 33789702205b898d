"""`llama-direct bench`: every lane side by side in one run, and `bench soak`: hold streams for minutes.

Both stop by themselves: counts and durations are bounded, everything listens on loopback or a
unix socket, and every process started here is stopped here, whatever happens.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_launcher.bench import (
    before,
    fleet,
    haproxy_anchor,
    idle,
    machine,
    models,
    report,
    request_cost,
    routes,
    scenarios,
    soak,
    summary,
)
from llama_launcher.bench.beds import ROUTER_MODELS, SYNTHETIC_ALIAS, Bed, real_bed, synthetic_bed
from llama_launcher.bench.processes import raise_fd_limit, run_loop


@dataclass(frozen=True)
class Plan:
    """How much to measure; `QUICK` proves the whole path works in well under two minutes."""

    reps: int
    levels: tuple[int, ...]
    real_tokens: dict[int, int]
    synthetic_tokens: dict[int, int]
    negotiations: int
    verifications: int
    held_streams: int
    load_reps: int
    load_tokens: int
    load_pace: float
    load_concurrency: int
    load_slow: int
    load_hammers: int
    settle: float
    cost_requests: int = 40
    cost_rounds: int = 5
    cost_rounds_before: int = 15
    """P7's rounds beside `--before REV`: one round's ratio of the two gates wanders by ±25% on a
    2-core box, so five rounds could not tell a change of a few percent from none."""
    idle_seconds: float = 15.0
    """One idle window; the windows start after `idle_settle` seconds of quiet (`request_cost.idle_windows`)."""
    idle_settle: float = 30.0
    idle_windows: int = 3
    idle_modes: tuple[str, ...] = idle.MODES
    """The modes whose stacks are measured idle, every process of each (`idle.run_modes`); needs a
    real llama-server, so --no-real skips them."""
    real: bool = True
    model_ttfts: int = 200
    """One-token streams per lane for P3 on each real upstream, single-model and router: a real first
    token varies by milliseconds, so 50 left the median's own error near a millisecond."""
    model_loads: int = 3
    """Switches to each of the router's two models (each a load, then a warm request)."""
    router: bool = True
    """Start a router bed too (two models: its loads take most of a minute on 2 cores, so not in --quick)."""
    fleet_reps: int = 5
    """Repetitions of the fleet's rows (1, 2, 4 upstreams; two gates on Redis); 0 skips them (--quick:
    seven more stacks would not fit its two minutes; `tests/real/test_bench_fleet.py` runs them small)."""
    fleet_streams: int = 64
    fleet_tokens: int = 2_000
    fleet_requests: int = 100
    before: str | None = None
    """`--before REV`: the code at REV measured beside this code (P3 synthetic and real, P5, P7, idle)."""


FULL = Plan(
    reps=5, levels=(1, 8, 64), real_tokens={1: 64, 8: 16, 64: 8},
    synthetic_tokens={1: 100_000, 8: 16_000, 64: 2_000}, negotiations=300, verifications=2_000, held_streams=1_000,
    load_reps=6, load_tokens=500, load_pace=500.0, load_concurrency=8, load_slow=64, load_hammers=16,
    settle=3.0,
)
QUICK = Plan(
    reps=1, levels=(1, 4), real_tokens={1: 8, 4: 4}, synthetic_tokens={1: 500, 4: 100}, negotiations=10,
    verifications=50, held_streams=20, load_reps=1, load_tokens=50, load_pace=500.0, load_concurrency=2,
    load_slow=4, load_hammers=2, settle=0.5, cost_requests=10, cost_rounds=2, cost_rounds_before=2, idle_seconds=1.0,
    idle_settle=0.5, idle_windows=1,
    model_ttfts=5, model_loads=1, router=False, fleet_reps=0, idle_modes=("launched",),
)


def _plain(doc: str | None) -> str | None:
    """A docstring as `--help` prints it: without the backticks that mark code in the source."""
    return doc.replace("`", "") if doc else doc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama-direct bench", description=_plain(__doc__))
    parser.add_argument("--quick", action="store_true", help="a short run that proves the benchmark works")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where the outputs go")
    parser.add_argument("--no-real", action="store_true", help="skip the real llama-server upstream")
    parser.add_argument("--reps", type=int, help="repetitions per lane and concurrency")
    parser.add_argument("--held", type=int, help="streams held open for the memory measurement")
    parser.add_argument("--before", metavar="REV", help="also measure the code at git revision REV, in the same "
                        "run: its own serve stack beside this one (P3, P5, P7, idle); needs this git checkout")
    return parser


def _soak_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama-direct bench soak", description=_plain(soak.__doc__))
    parser.add_argument("--streams", type=int, default=32, help="concurrent streams (default 32)")
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to hold them (default 600)")
    parser.add_argument("--pace", type=float, default=200.0, help="tokens per second per stream (default 200)")
    parser.add_argument("--tokens", type=int, default=400, help="tokens per stream before the next one (default 400)")
    parser.add_argument("--out", type=Path, help="also write the summary as JSON here")
    return parser


_STARTED = time.monotonic()


def _say(text: str) -> None:
    print(f"bench: [{time.monotonic() - _STARTED:5.0f} s] {text}", file=sys.stderr, flush=True)


def _with_bed(start: Callable[[], Bed], work: Callable[[Bed], Coroutine[Any, Any, Any]]) -> Any:
    bed = start()
    try:
        return run_loop(work(bed))
    finally:
        bed.stop()


def _cost_rounds(plan: Plan, old: Path | None) -> int:
    """P7's rounds: more when REV's gate is measured beside this one (`Plan.cost_rounds_before`)."""
    return plan.cost_rounds if old is None else plan.cost_rounds_before


def _run_real(plan: Plan, work: Path, old: Path | None, results: dict[str, Any]) -> None:
    """The real llama-server's rounds (and a router's, when asked), written into `results`."""
    _say("starting a real llama-server and the lanes in front of it")

    async def on_real(bed: Bed) -> None:
        bed.budgeted = request_cost.budgeted_user(bed.stack)
        results["rounds"] += await scenarios.throughput(
            bed, real=True, levels=plan.levels, tokens=plan.real_tokens, reps=plan.reps, say=_say)
        results["gate_cost"]["real"] = await request_cost.gate_cost(
            bed, scenarios.chat_body(real=True, max_tokens=1), count=plan.cost_requests,
            rounds=_cost_rounds(plan, old), kept_alive=True, budgeted=bed.budgeted)
        results["many_models"]["single"] = await models.lane_vs_raw(bed, plan.model_ttfts)
        results["routes"] = await routes.compare(bed, levels=plan.levels[:2], tokens=plan.real_tokens,
                                                 reps=plan.reps, ttfts=plan.model_ttfts, say=_say)
        if bed.before is not None:
            results["first_token_real"] = await scenarios.first_token(bed, plan.model_ttfts, real=True)

    async def on_router(bed: Bed) -> None:
        results["many_models"]["router"] = await models.lane_vs_raw(
            bed, plan.model_ttfts, model=ROUTER_MODELS[0])
        results["many_models"]["loads"] = await models.cold_and_warm(bed, plan.model_loads)

    results["many_models"] = {}
    _with_bed(lambda: real_bed(work, max_tokens=max(plan.real_tokens.values()) * 4, before=old), on_real)
    if plan.router:
        _say("starting a real llama-server router (two models, one loaded at a time) and the lanes")
        _with_bed(lambda: real_bed(work, max_tokens=max(plan.real_tokens.values()) * 4, router=True),
                  on_router)


def _run_fleet(plan: Plan, work: Path, max_tokens: int) -> dict[str, Any]:
    """One gate in front of 1, 2 and 4 synthetic upstreams, and two gates on one Redis."""
    _say("the fleet: one gate in front of 1, 2 and 4 synthetic upstreams; two gates on one Redis")
    return {
        "routing": run_loop(fleet.routing_cost(work, streams=plan.fleet_streams, tokens=plan.fleet_tokens,
                                               reps=plan.fleet_reps, max_tokens=max_tokens, say=_say)),
        "redis": run_loop(fleet.redis_round_trip(work, count=plan.fleet_requests, reps=plan.fleet_reps,
                                                 max_tokens=max_tokens, say=_say)),
    }


def run_bench(plan: Plan, out: Path, command: str) -> dict[str, Any]:
    started = time.monotonic()
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="ldb-"))
    results: dict[str, Any] = {"machine": machine.describe(), "command": command, "rounds": [], "gate_cost": {}}
    max_tokens = max(max(plan.synthetic_tokens.values()), plan.load_tokens, 10_000)
    try:
        tree = before.materialise(plan.before, work) if plan.before else None
        old = tree.path if tree else None
        if tree is not None:
            results["before"] = {"rev": tree.rev, "commit": tree.commit}
            _say(f"the code at {tree.rev} ({tree.commit[:12]}) runs beside this code's")
        if plan.real:
            _run_real(plan, work, old, results)

        if plan.real and plan.idle_modes:
            results["idle_modes"] = idle.run_modes(work, settle=plan.idle_settle, seconds=plan.idle_seconds,
                                                   windows=plan.idle_windows, modes=plan.idle_modes, before=old,
                                                   say=_say)
        _say("starting the synthetic upstream and the lanes in front of it")

        async def on_synthetic(bed: Bed) -> None:
            idle = {name: pid for name, pid in bed.pids().items() if name.endswith(("gate", "broker"))}
            results["idle"] = await request_cost.idle_windows(idle, settle=plan.idle_settle,
                                                              seconds=plan.idle_seconds, windows=plan.idle_windows)
            results["idle_cpu"] = {name: results["idle"]["ms_per_s"][name] for name in ("gate", "broker")}
            if "before" in results:
                results["before"]["idle_cpu"] = {name: results["idle"]["ms_per_s"][f"before_{name}"]
                                                 for name in ("gate", "broker")}
            bed.budgeted = request_cost.budgeted_user(bed.stack)
            results["rounds"] += await scenarios.throughput(
                bed, real=False, levels=plan.levels, tokens=plan.synthetic_tokens, reps=plan.reps, say=_say)
            results["gate_cost"]["synthetic"] = await request_cost.gate_cost(
                bed, scenarios.chat_body(real=False, max_tokens=1), count=plan.cost_requests * 5,
                rounds=_cost_rounds(plan, old), kept_alive=False, budgeted=bed.budgeted)
            anchor = haproxy_anchor.start_anchor(bed.upstream_socket, bed.key, work, model=SYNTHETIC_ALIAS,
                                                 cap=max_tokens)
            if anchor is None:
                _say(haproxy_anchor.NOT_INSTALLED)
                results["haproxy_anchor"] = {"skipped": haproxy_anchor.NOT_INSTALLED}
            try:
                results["first_token"] = await scenarios.first_token(bed, plan.negotiations, anchor=anchor)
            finally:
                if anchor is not None:
                    anchor.stop()
            results["negotiation"] = await scenarios.negotiation_latency(bed, plan.negotiations)
            results["memory"] = await scenarios.held_memory(bed, plan.held_streams, settle=plan.settle / 3, say=_say)
            results["app_load"] = await scenarios.app_load(
                bed, work, reps=plan.load_reps, concurrency=plan.load_concurrency, max_tokens=plan.load_tokens,
                pace=plan.load_pace, slow=plan.load_slow, hammers=plan.load_hammers, settle=plan.settle, say=_say)

        _with_bed(lambda: synthetic_bed(work, max_tokens=max_tokens, before=old), on_synthetic)
        results["verification"] = scenarios.verification_cost(plan.verifications)
        if old is not None:
            results["before"]["verification"] = before.verification_cost(old, plan.verifications)
        if plan.fleet_reps:
            results["fleet"] = _run_fleet(plan, work, max_tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["rows"] = summary.summarize(results["rounds"])
    if "app_load" in results:
        results["app_load_summary"] = summary.app_load_summary(results["app_load"])
    results["targets"] = [vars(v) for v in summary.verdicts(results)]
    results["duration_s"] = time.monotonic() - started
    return results


def bench(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {"real": not args.no_real, "before": args.before}
    if args.reps:
        overrides["reps"] = args.reps
    if args.held:
        overrides["held_streams"] = args.held
    plan = Plan(**{**vars(plan), **overrides})
    command = "llama-direct bench " + shlex.join(argv) if argv else "llama-direct bench"
    results = run_bench(plan, args.out, command.strip())
    paths = report.write_outputs(results, args.out)
    print(report.render_markdown(results))
    _say("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def run_soak(argv: list[str]) -> int:
    args = _soak_parser().parse_args(argv)
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="ldb-"))
    try:
        bed = synthetic_bed(work, max_tokens=max(args.tokens, 16))
        try:
            found = run_loop(soak.soak(bed, streams=args.streams, seconds=args.seconds, pace=args.pace,
                                       tokens=args.tokens, say=_say))
        finally:
            bed.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(soak.render(found), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(soak.to_json(found))
    return 0 if found.passed else 1


BENCH_EXTRA_MISSING = "llama-direct bench: the plot needs matplotlib: pip install 'llama-direct[bench]'"
"""Said before anything runs, rather than after a whole run whose results could not be drawn."""


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if argv[:1] != ["soak"] and importlib.util.find_spec("matplotlib") is None:
        print(BENCH_EXTRA_MISSING, file=sys.stderr, flush=True)
        return 2
    try:
        if argv and argv[0] == "soak":
            return run_soak(argv[1:])
        return bench(argv)
    except RuntimeError as error:
        print(f"llama-direct bench: error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
