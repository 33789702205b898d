"""Many models: time to first token on a cold model (its load included) and a warm one, and the lane's
added time to first token against raw llama-server, router upstream beside a single-model one.

The router bed serves two names for one file with `--models-max 1`, so the first request after a
switch loads its model (cold) and the next one finds it loaded (warm). Raw requests to a router
must name a model (it refuses a body without one); the lane's gate sets the grant's.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

from llama_direct.lanes import CHAT_PATH
from llama_launcher.bench.beds import ROUTER_MODELS, Bed
from llama_launcher.bench.clients import Target, chat_request, negotiate, stream_once
from llama_launcher.bench.scenarios import chat_body, rotated
from llama_launcher.bench.stats import percentile

COLD_TIMEOUT_S = 120.0


async def _direct(bed: Bed, model: str | None) -> tuple[Target, str]:
    asked: dict[str, Any] = {"max_tokens": 1} if model is None else {"max_tokens": 1, "model": model}
    _, answer = await negotiate(Target(bed.stack.public, "/"), bed.stack.access_token, asked)
    url = urllib.parse.urlsplit(answer["url"])
    assert url.hostname is not None and url.port is not None
    return Target((url.hostname, url.port), url.path + CHAT_PATH), f"Bearer {answer['token']}"


async def _ttft_ms(bed: Bed, lane: str, model: str | None, *, timeout: float = 30.0) -> float | None:
    """One one-token stream's time to first token (negotiation apart), or None when it failed."""
    body = chat_body(real=True, max_tokens=1)
    if lane == "raw":
        target, authorization = bed.target("raw"), bed.authorization("raw") or ""
        if model is not None:
            body["model"] = model
    else:
        target, authorization = await _direct(bed, model)
    try:
        found = await stream_once(target, chat_request(target, json.dumps(body).encode(), authorization),
                                  timeout=timeout)
    except (OSError, TimeoutError):
        return None
    return found.ttft * 1000 if found.ok and found.ttft is not None else None


def _summary(values: Sequence[float | None]) -> dict[str, Any]:
    ok = [v for v in values if v is not None]
    return {"count": len(ok), "failed": len(values) - len(ok),
            "p50_ms": percentile(ok, 50) if ok else None, "p99_ms": percentile(ok, 99) if ok else None}


async def lane_vs_raw(bed: Bed, count: int, model: str | None = None) -> dict[str, Any]:
    """P3 on a real upstream: raw and direct, one-token streams interleaved; `added_p50_ms` is the lane's cost."""
    for lane in ("raw", "direct"):
        await _ttft_ms(bed, lane, model, timeout=COLD_TIMEOUT_S)  # warm-up: connections, the model loaded
    samples: dict[str, list[float | None]] = {"raw": [], "direct": []}
    for rep in range(count):
        for lane in rotated(("raw", "direct"), rep):
            samples[lane].append(await _ttft_ms(bed, lane, model))
    found: dict[str, Any] = {lane: _summary(values) for lane, values in samples.items()}
    raw, direct = found["raw"], found["direct"]
    for key in ("p50", "p99"):
        both = raw[f"{key}_ms"] is not None and direct[f"{key}_ms"] is not None
        found[f"added_{key}_ms"] = direct[f"{key}_ms"] - raw[f"{key}_ms"] if both else None
    return found


async def cold_and_warm(bed: Bed, reps: int) -> dict[str, Any]:
    """Through the lane: each switch to the other model loads it (cold), the request after finds it loaded."""
    cold: list[float | None] = []
    warm: list[float | None] = []
    for _ in range(reps):
        for model in (ROUTER_MODELS[1], ROUTER_MODELS[0]):  # the default was loaded last
            cold.append(await _ttft_ms(bed, "direct", model, timeout=COLD_TIMEOUT_S))
            warm.append(await _ttft_ms(bed, "direct", model))
    return {"cold": _summary(cold), "warm": _summary(warm)}


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} ms"


def render(found: dict[str, Any]) -> list[str]:
    """The report's many-models lines: P3 on each upstream side by side, then cold and warm."""
    lines = ["| P3 (real, one-token streams) | single-model upstream | router upstream (2 models) |", "|---|---|---|"]
    single, router = found.get("single", {}), found.get("router", {})
    for label, lane, key in (("raw llama-server p50", "raw", "p50_ms"), ("lane p50", "direct", "p50_ms"),
                             ("lane p99", "direct", "p99_ms")):
        lines.append(f"| {label} | {_ms(single.get(lane, {}).get(key))} | {_ms(router.get(lane, {}).get(key))} |")
    for label, added in (("added by the lane, p50", "added_p50_ms"), ("added by the lane, p99", "added_p99_ms")):
        lines.append(f"| {label} | {_ms(single.get(added))} | {_ms(router.get(added))} |")
    loads = found.get("loads")
    if loads:
        cold, warm = loads["cold"], loads["warm"]
        lines += ["", f"- Router, through the lane: time to first token on a cold model (its load included) "
                      f"{_ms(cold['p50_ms'])} p50 ({cold['count']} loads, {cold['failed']} failed), on a warm one "
                      f"{_ms(warm['p50_ms'])} p50 ({warm['count']} requests, {warm['failed']} failed)."]
    return lines
