"""One streaming route besides chat through the lane: Responses, P1 and P3 (issue 27).

The gate shapes a Responses body with more work than a chat body (items rebuilt, the tool and
state rules, the prompt measured over items), and llama-server streams it in a format with more
events. So the question is whether the lane's cost over raw llama-server is the same on both routes:
raw and direct, for chat and for Responses, are interleaved in every repetition (rotated, as the
other rounds are), and each figure is the median over repetitions of the direct/raw ratio of one
route, measured in the same repetition.

- P1: tokens per second of `concurrency` streams on the real model, direct/raw per repetition.
- P3: added time to first token, one-token streams one after another: direct minus raw, p50 and p99.

Each direct request negotiates its own token for its route (`route` in the negotiation body) before
its clock starts, as `scenarios.first_token` does for chat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_direct.lanes import CHAT, RESPONSES, LaneRoute
from llama_launcher.bench.beds import Bed, real_bed
from llama_launcher.bench.clients import StreamResult, Target, chat_request, negotiate, stream_once
from llama_launcher.bench.processes import run_loop
from llama_launcher.bench.scenarios import REAL_PROMPT, rotated
from llama_launcher.bench.stats import median, percentile

ROUTES = (CHAT, RESPONSES)
LANES = ("raw", "direct")
Say = Callable[[str], None]


def body(route: LaneRoute, max_tokens: int) -> dict[str, Any]:
    """The same prompt and sampling on each route, in its own format, its length under its own name."""
    common = {"stream": True, "temperature": 0, "seed": 7}
    if route is RESPONSES:
        return {"input": [{"role": "user", "content": [{"type": "input_text", "text": REAL_PROMPT}]}],
                "max_output_tokens": max_tokens, **common}
    return {"messages": [{"role": "user", "content": REAL_PROMPT}], "max_tokens": max_tokens, **common}


async def _target(bed: Bed, lane: str, route: LaneRoute, max_tokens: int) -> tuple[Target, str]:
    if lane == "raw":
        return Target(str(bed.upstream_socket), route.path), f"Bearer {bed.key}"
    _, answer = await negotiate(Target(bed.stack.public, "/"), bed.stack.access_token,
                                {"max_tokens": max_tokens, "route": route.name})
    url = urllib.parse.urlsplit(answer["url"])
    assert url.hostname is not None and url.port is not None
    return Target((url.hostname, url.port), url.path + route.path), f"Bearer {answer['token']}"


async def _round(bed: Bed, lane: str, route: LaneRoute, concurrency: int, max_tokens: int) -> dict[str, Any]:
    """`concurrency` streams at once, each with its own token; tokens per second over the round."""
    sent = json.dumps(body(route, max_tokens)).encode()
    targets = [await _target(bed, lane, route, max_tokens) for _ in range(concurrency)]
    results: list[StreamResult] = await asyncio.gather(
        *(stream_once(target, chat_request(target, sent, auth), timeout=300) for target, auth in targets))
    wall = max(r.ended for r in results) - min(r.started for r in results)
    ok = all(r.ok for r in results)
    return {"ok": ok, "tokens": sum(r.tokens for r in results), "wall_s": wall,
            "tokens_per_s": sum(r.tokens for r in results) / wall if ok and wall > 0 else None}


async def throughput(bed: Bed, *, levels: tuple[int, ...], tokens: dict[int, int], reps: int,
                     say: Say = print) -> dict[str, Any]:
    """P1 for each route: the median over repetitions of direct/raw tokens per second, per concurrency."""
    pairs = [(route, lane) for route in ROUTES for lane in LANES]
    for route, lane in pairs:  # warm-up: first connections, and the prompt in llama-server's cache
        await _round(bed, lane, route, 1, min(tokens.values()))
    found: dict[str, Any] = {}
    for concurrency in levels:
        ratios: dict[str, list[float]] = {route.name: [] for route in ROUTES}
        for rep in range(reps):
            rounds = {(route.name, lane): await _round(bed, lane, route, concurrency, tokens[concurrency])
                      for route, lane in rotated(pairs, rep)}
            for route in ROUTES:
                raw, direct = rounds[(route.name, "raw")], rounds[(route.name, "direct")]
                if raw["tokens_per_s"] and direct["tokens_per_s"]:
                    ratios[route.name].append(direct["tokens_per_s"] / raw["tokens_per_s"])
            say(f"routes: {concurrency} stream(s), repetition {rep + 1}/{reps} done")
        found[str(concurrency)] = {name: {"ratios": values, "median_ratio": median(values) if values else None}
                                   for name, values in ratios.items()}
    return found


async def first_token(bed: Bed, count: int) -> dict[str, Any]:
    """P3 for each route: one-token streams one after another, lanes and routes interleaved."""
    pairs = [(route, lane) for route in ROUTES for lane in LANES]
    samples: dict[tuple[str, str], list[float]] = {(route.name, lane): [] for route, lane in pairs}
    for rep in range(count):
        for route, lane in rotated(pairs, rep):
            target, auth = await _target(bed, lane, route, 1)
            result = await stream_once(target, chat_request(target, json.dumps(body(route, 1)).encode(), auth),
                                       timeout=60)
            if result.ttft is not None and result.status == 200:
                samples[(route.name, lane)].append(result.ttft * 1000)
    found: dict[str, Any] = {}
    for route in ROUTES:
        raw, direct = samples[(route.name, "raw")], samples[(route.name, "direct")]
        if raw and direct:
            found[route.name] = {
                "count": min(len(raw), len(direct)),
                "raw_p50_ms": percentile(raw, 50), "direct_p50_ms": percentile(direct, 50),
                "added_p50_ms": percentile(direct, 50) - percentile(raw, 50),
                "added_p99_ms": percentile(direct, 99) - percentile(raw, 99),
            }
    return found


async def compare(bed: Bed, *, levels: tuple[int, ...], tokens: dict[int, int], reps: int, ttfts: int,
                  say: Say = print) -> dict[str, Any]:
    """P1 and P3 for chat and Responses on one real bed."""
    return {"p1": await throughput(bed, levels=levels, tokens=tokens, reps=reps, say=say),
            "p3": await first_token(bed, ttfts)}


def render(found: dict[str, Any]) -> str:
    """The figures as a Markdown table: one row per route."""
    lines = ["| route | " + " | ".join(f"P1 direct/raw tokens/s at {c}" for c in found["p1"])
             + " | P3 added TTFT p50 / p99 |", "|---|" + "---:|" * (len(found["p1"]) + 1)]
    for route in ROUTES:
        p1 = [found["p1"][c][route.name]["median_ratio"] for c in found["p1"]]
        p3 = found["p3"].get(route.name)
        ttft = f"{p3['added_p50_ms']:+.2f} / {p3['added_p99_ms']:+.2f} ms" if p3 else "–"
        lines.append(f"| {route.name} | " + " | ".join("–" if r is None else f"{r:.3f}×" for r in p1)
                     + f" | {ttft} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m llama_launcher.bench.routes`: this comparison alone, on a real llama-server."""
    parser = argparse.ArgumentParser(prog="python -m llama_launcher.bench.routes", description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="repetitions per concurrency (P1)")
    parser.add_argument("--ttfts", type=int, default=50, help="one-token streams per lane and route (P3)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream (P1)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4], help="concurrencies (P1)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ldb-routes-"))
    try:
        bed = real_bed(work, max_tokens=args.tokens * 4)
        try:
            found = run_loop(compare(bed, levels=tuple(args.levels), tokens=dict.fromkeys(args.levels, args.tokens),
                                     reps=args.reps, ttfts=args.ttfts,
                                     say=lambda text: print(text, file=sys.stderr, flush=True)))
        finally:
            bed.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(found))
    if args.out:
        args.out.write_text(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
