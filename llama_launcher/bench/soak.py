"""`llama-direct bench soak`: many streams through the gate for minutes; no error, no growing memory.

Each of `--streams` workers negotiates, reads one paced synthetic stream to its end, checks it
(status 200, every token, `[DONE]`), and starts the next, until `--seconds` have passed. The
gate's RSS is sampled every second; its level after the warm-up (a tenth of the run, 5 to 60 s)
is the reference, and the run passes with 0 errors and an end level within 10% of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from llama_launcher.bench.beds import Bed
from llama_launcher.bench.processes import rss_kib
from llama_launcher.bench.scenarios import chat_body, one_stream
from llama_launcher.bench.stats import median

RSS_TOLERANCE = 0.10


def warmup_seconds(seconds: float) -> float:
    return min(max(seconds / 10, 5.0), 60.0)


@dataclass
class SoakResult:
    streams: int
    seconds: float
    completed: int = 0
    errors: int = 0
    chunks: int = 0
    rss_warm_kib: float | None = None
    rss_end_kib: float | None = None
    rss_max_kib: int | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def rss_growth(self) -> float | None:
        if self.rss_warm_kib is None or self.rss_end_kib is None:
            return None
        return self.rss_end_kib / self.rss_warm_kib - 1

    @property
    def passed(self) -> bool:
        growth = self.rss_growth
        return self.errors == 0 and self.completed > 0 and growth is not None and abs(growth) <= RSS_TOLERANCE


def judge(result: SoakResult, warmup: float) -> None:
    """Set the warm and end levels from the samples: medians of three, so one noisy read cannot decide."""
    after = [rss for at, rss in result.samples if at >= warmup]
    if len(after) < 2:
        return
    result.rss_warm_kib = median(after[:3])
    result.rss_end_kib = median(after[-3:])
    result.rss_max_kib = max(after)


async def soak(bed: Bed, *, streams: int, seconds: float, pace: float, tokens: int,
               say: Callable[[str], None] = print) -> SoakResult:
    result = SoakResult(streams=streams, seconds=seconds)
    body = chat_body(real=False, max_tokens=tokens, pace=pace)
    started = time.monotonic()
    deadline = started + seconds
    timeout = tokens / pace * 3 + 10 if pace > 0 else 60.0

    async def worker() -> None:
        while time.monotonic() < deadline:
            found = await one_stream(bed, "direct", body, timeout=timeout)
            if found.ok and found.tokens == tokens:
                result.completed += 1
                result.chunks += found.chunks
            else:
                result.errors += 1
                await asyncio.sleep(0.1)

    async def sampler() -> None:
        next_say = started + 30
        while time.monotonic() < deadline:
            result.samples.append((time.monotonic() - started, rss_kib(bed.stack.gate_pid)))
            if time.monotonic() >= next_say:
                say(f"soak: {time.monotonic() - started:.0f} s, {result.completed} streams, {result.errors} errors, "
                    f"gate RSS {result.samples[-1][1]:,} KiB")
                next_say += 30
            await asyncio.sleep(1.0)

    sampling = asyncio.get_running_loop().create_task(sampler())
    await asyncio.gather(*(worker() for _ in range(streams)))
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)
    result.samples.append((time.monotonic() - started, rss_kib(bed.stack.gate_pid)))
    judge(result, warmup_seconds(seconds))
    return result


def render(result: SoakResult) -> str:
    growth = result.rss_growth
    growth_text = "n/a" if growth is None else f"{growth:+.1%}"
    warm = "n/a" if result.rss_warm_kib is None else f"{result.rss_warm_kib:,.0f}"
    end = "n/a" if result.rss_end_kib is None else f"{result.rss_end_kib:,.0f}"
    return (
        f"soak: {result.streams} concurrent streams for {result.seconds:.0f} s through the gate: "
        f"{result.completed} streams completed, {result.chunks:,} chunks, {result.errors} errors; "
        f"gate RSS {warm} KiB after warm-up, {end} KiB at the end ({growth_text}, max {result.rss_max_kib} KiB): "
        f"{'PASS' if result.passed else 'FAIL'}"
    )


def to_json(result: SoakResult) -> str:
    return json.dumps({**asdict(result), "rss_growth": result.rss_growth, "passed": result.passed}, indent=1)
