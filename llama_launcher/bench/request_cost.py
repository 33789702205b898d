"""P7 and the idle floor: what the gate spends per lane request, and what gate and broker spend doing nothing.

Measured the way the issue defines it, so that the figure is the request half and nothing else:

- CPU from the scheduler's per-thread counters (`processes.thread_cpu_ns`, nanoseconds), never
  `/proc/PID/stat`'s 10 ms ticks;
- the tokens negotiated beforehand, outside the measured window: relaying `POST /direct-stream`
  to the broker is the gate's work too, but it is the negotiation's cost, reported apart;
- the idle background (the key pull, the broker's health polls) measured in a quiet window right
  before each round and subtracted at the same rate over the round's wall time.

The old figure (2.9 ms of gate CPU per request) summed the negotiation's relay and the idle pulls
into the request from tick counters; `first_token` now reads the same counters as here.

Each round's window runs on `REPORT_TAIL_S` past its last answer: the gate sends its usage reports a
moment after the streams end, several in one body (`llama_launcher.gate.usage_reports`), and the last
requests' reports belong to the round that made them. With `budgeted`, the rounds of a named user with
a token budget run beside the owner's on the same stack: their negotiations reserve, the gate's reports
settle, so the difference is what reservation (at negotiation, measured apart) and settlement cost.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from llama_direct.lanes import CHAT_PATH
from llama_launcher.bench.beds import Bed
from llama_launcher.bench.clients import (
    Target,
    chat_request,
    keep_alive,
    kept_alive_request,
    negotiate,
    stream_once,
)
from llama_launcher.bench.processes import thread_cpu_ns
from llama_launcher.bench.stack import ServeStack, add_user
from llama_launcher.bench.stats import median, paired_ratios
from llama_launcher.gate.usage_reports import COALESCE_SECONDS

IDLE_WINDOW_S = 1.0
REPORT_TAIL_S = COALESCE_SECONDS + 0.3
"""How long a stack's round is still counted after its last answer: its usage reports' last body."""
BUDGETED_USER = "bench-budgeted"
BUDGETED_LIMITS = ("--tokens-per-day", str(10**12))
"""A budget the bench never runs out of: every grant reserves, every end settles, none is refused."""


def thread_cpu_ns_of(pids: dict[str, int]) -> dict[str, int]:
    return {name: thread_cpu_ns(pid) for name, pid in pids.items()}


async def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU while nothing is asked of it, in ms of CPU per second of wall time."""
    before, started = thread_cpu_ns_of(pids), time.perf_counter()
    await asyncio.sleep(seconds)
    after, wall = thread_cpu_ns_of(pids), time.perf_counter() - started
    return {name: (after[name] - before[name]) / 1e6 / wall for name in pids}


def net_ms_per_request(spent_ns: int, wall_s: float, idle_ms_per_s: float, count: int) -> float:
    """CPU per request with the idle background (measured apart, at `idle_ms_per_s`) taken out."""
    return (spent_ns / 1e6 - idle_ms_per_s * wall_s) / count


def budgeted_user(stack: ServeStack) -> str:
    """The API key of `BUDGETED_USER`, added to this code's stack (`stack.add_user`)."""
    return add_user(stack, BUDGETED_USER, *BUDGETED_LIMITS)


async def tokens_for(stack: ServeStack, count: int, max_tokens: int,
                     credential: str | None = None) -> tuple[Target, list[str]]:
    """`count` single-use lane tokens negotiated now, before any measurement, with `credential` (the
    owner's access token by default); and where they go."""
    public = Target(stack.public, "/")
    tokens, target = [], None
    for _ in range(count):
        _, answer = await negotiate(public, credential or stack.access_token, {"max_tokens": max_tokens})
        url = urllib.parse.urlsplit(answer["url"])
        assert url.hostname is not None and url.port is not None
        target = Target((url.hostname, url.port), url.path + CHAT_PATH)
        tokens.append(answer["token"])
    assert target is not None
    return target, tokens


async def gate_cost(bed: Bed, body: dict[str, Any], *, count: int, rounds: int, kept_alive: bool,
                    idle_s: float = IDLE_WINDOW_S, budgeted: str | None = None) -> dict[str, Any]:
    """Gate CPU per lane request (P7): `rounds` rounds of `count` requests, tokens negotiated first.

    `kept_alive`: one client connection for the whole round (as a browser or SDK reuses one);
    otherwise each request asks for `Connection: close`. A bed with a `before` stack (`bench
    --before REV`) measures REV's gate in rounds alternating with this code's (each goes first in
    turn), and its figures come under `before`, with `gate_ratio`, the median of each round's ratio
    of this code's gate CPU to REV's (`stats.paired_ratios`); `budgeted` (a user's API key, `budgeted_user`) adds
    that user's rounds on this code's stack, under `budgeted`. The bare relay, the floor of any
    pass-through process, answers the same requests in rounds of its own, interleaved too, under
    `relay`; always with `Connection: close`, since it keeps one upstream connection per client
    connection and llama-server ends a kept-alive connection after a streamed answer (the gate opens
    one per request). Each stack's negotiations are measured too, apart (`negotiation_ms_per_request`).
    """
    stacks = {"after": (bed.stack, None), **({"before": (bed.before, None)} if bed.before is not None else {}),
              **({"budgeted": (bed.stack, budgeted)} if budgeted is not None else {})}
    names = [*stacks, "relay"]
    per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    payload = json.dumps(body).encode()
    for index in range(rounds):
        shift = index % len(names)
        for name in [*names[shift:], *names[:shift]]:
            if name == "relay":
                found_round = await _measure({"relay": bed.relay.pid}, bed.target("relay"), [bed.key] * count,
                                             payload, False, idle_s)
            else:
                stack, credential = stacks[name]
                pids = {"gate": stack.gate_pid, "broker": stack.broker_pid}
                first, started = thread_cpu_ns_of(pids), time.perf_counter()
                target, tokens = await tokens_for(stack, count, body["max_tokens"], credential)
                spent, wall = thread_cpu_ns_of(pids), time.perf_counter() - started
                found_round = await _measure(pids, target, tokens, payload, kept_alive, idle_s, REPORT_TAIL_S)
                idle = found_round["idle_ms_per_s"]
                found_round["negotiation_ms_per_request"] = {
                    name: net_ms_per_request(spent[name] - first[name], wall, idle[name], count) for name in pids}
            per_round[name].append(found_round)
    found = _reduce(per_round["after"], count, kept_alive)
    for name in ("before", "budgeted"):
        if name in per_round:
            found[name] = _reduce(per_round[name], count, kept_alive)
    if "before" in per_round:
        found["before"]["gate_ratio"] = paired_ratios([r["ms_per_request"]["gate"] for r in per_round["after"]],
                                                      [r["ms_per_request"]["gate"] for r in per_round["before"]])
    found["relay"] = {"rounds": per_round["relay"],
                      "ms_per_request": median([r["ms_per_request"]["relay"] for r in per_round["relay"]])}
    return found


async def _measure(pids: dict[str, int], target: Target, credentials: Sequence[str], payload: bytes,
                   kept_alive: bool, idle_s: float, tail_s: float = 0.0) -> dict[str, Any]:
    """One round: each process's CPU per request over `len(credentials)` requests, idle background out;
    the window runs `tail_s` past the last answer (what the requests still cause after it)."""
    count = len(credentials)
    idle = await idle_cpu(pids, idle_s)
    before, started = thread_cpu_ns_of(pids), time.perf_counter()
    send = _kept if kept_alive else _closed
    statuses = await send(target, credentials, payload)
    await asyncio.sleep(tail_s)
    after, wall = thread_cpu_ns_of(pids), time.perf_counter() - started
    return {"ok": sum(1 for s in statuses if s == 200), "count": count, "wall_s": wall, "idle_ms_per_s": idle,
            "ms_per_request": {name: net_ms_per_request(after[name] - before[name], wall, idle[name], count)
                               for name in pids}}


def _reduce(per_round: list[dict[str, Any]], count: int, kept_alive: bool) -> dict[str, Any]:
    return {"count": count, "rounds": per_round, "kept_alive": kept_alive,
            "gate_ms_per_request": median([r["ms_per_request"]["gate"] for r in per_round]),
            "broker_ms_per_request": median([r["ms_per_request"]["broker"] for r in per_round]),
            "negotiation_ms_per_request": {name: median([r["negotiation_ms_per_request"][name] for r in per_round])
                                           for name in ("gate", "broker")}}


async def idle_windows(pids: dict[str, int], *, settle: float, seconds: float, windows: int) -> dict[str, Any]:
    """The idle floor, measured properly: after `settle` seconds of quiet (a broker polls its gate at
    the fast rate for a while after a negotiation or a start), `windows` windows of `seconds` each,
    every process read in the same windows; the median window per process, in ms of CPU per second.

    Every stack of the bed sits idle in the same windows, so this code's and REV's (`--before`)
    floors are measured side by side, under the same background.
    """
    await asyncio.sleep(settle)
    found = [await idle_cpu(pids, seconds) for _ in range(windows)]
    return {"settle_s": settle, "window_s": seconds, "windows": found,
            "ms_per_s": {name: median([w[name] for w in found]) for name in pids}}


async def _kept(target: Target, credentials: Sequence[str], payload: bytes) -> list[int]:
    client = await keep_alive(target)
    try:
        return [await client.send(kept_alive_request(target, payload, f"Bearer {credential}"))
                for credential in credentials]
    finally:
        client.close()


async def _closed(target: Target, credentials: Sequence[str], payload: bytes) -> list[int]:
    found = []
    for credential in credentials:
        result = await stream_once(target, chat_request(target, payload, f"Bearer {credential}"), timeout=30)
        found.append(result.status if result.ok else 0)
    return found
