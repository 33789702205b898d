"""The fleet's costs, on fast synthetic upstreams (two CPU llama-servers would share the same 2 cores).

In one run, interleaved by repetition:

- **routing**: one gate in front of 1, 2 and 4 synthetic upstreams, tokens negotiated beforehand,
  each figure the median of per-repetition ratios against one upstream. Routing's own cost is
  measured through a gate given N entries that are all the same synthetic server, so that only
  routing differs (N distinct processes would also change the kernel's and the caches' work): 64
  streams at once (gate CPU per stream, tokens/s) and one-token requests one after another; there
  routing must cost under 2%. The same 64 streams over N distinct servers show capacity instead:
  on 2 cores tokens/s follow how much upstream capacity there is, since every upstream shares them.
- **Redis**: two gates (two `serve` stacks: one audience, one signing key file, one Redis) against
  a gate alone, one-token requests with tokens negotiated beforehand, interleaved; time to first
  token p50/p99 of each, and the difference: the Redis round trip a request pays (its `spend`).
  Skipped, with a line saying so, where `redis-server` is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from llama_direct.lanes import CHAT
from llama_direct.runtime import REDIS_URL_ENV
from llama_launcher.attached import AttachedServer
from llama_launcher.bench.clients import chat_request, stream_once
from llama_launcher.bench.processes import KEY_ENV, Child, thread_cpu_ns, wait_for_socket
from llama_launcher.bench.request_cost import tokens_for
from llama_launcher.bench.scenarios import Say, chat_body, rotated
from llama_launcher.bench.stack import ServeStack, start_stack
from llama_launcher.bench.stats import median, percentile
from llama_launcher.gate.pool import Pool, shaping_limits

UPSTREAM_COUNTS = (1, 2, 4)


@contextlib.contextmanager
def _synthetic_upstreams(work: Path, count: int, key: str) -> Iterator[list[Path]]:
    children, sockets = [], []
    try:
        for n in range(count):
            path = work / f"fleet-synthetic-{n}.sock"
            child = Child.python("synthetic", "llama_launcher.bench.synthetic", ["--socket", str(path)],
                                 work / f"fleet-synthetic-{n}.log", env={KEY_ENV: key})
            children.append(child)
            wait_for_socket(path, child)
            sockets.append(path)
        yield sockets
    finally:
        for child in children:
            child.stop()


@contextlib.contextmanager
def _stacks(starts: dict[Any, Any]) -> Iterator[dict[Any, ServeStack]]:
    started: dict[Any, ServeStack] = {}
    try:
        for name, start in starts.items():
            started[name] = start()
        yield started
    finally:
        for stack in started.values():
            stack.stop()


async def _round(stack: ServeStack, streams: int, body: dict[str, Any]) -> dict[str, float]:
    target, tokens = await tokens_for(stack, streams, body["max_tokens"])
    payload = json.dumps(body).encode()
    before, started = thread_cpu_ns(stack.gate_pid), time.perf_counter()
    results = await asyncio.gather(*(stream_once(target, chat_request(target, payload, f"Bearer {t}"), timeout=120)
                                     for t in tokens))
    spent, wall = thread_cpu_ns(stack.gate_pid) - before, time.perf_counter() - started
    ok = sum(1 for r in results if r.ok)
    return {"ok": ok, "gate_ms_per_request": spent / 1e6 / streams,
            "tokens_per_s": sum(r.tokens for r in results) / wall}


async def _one_token_round(stack: ServeStack, count: int) -> float:
    """Gate CPU per one-token request, sent one after another with `Connection: close`."""
    target, tokens = await tokens_for(stack, count, 1)
    payload = json.dumps(chat_body(real=False, max_tokens=1)).encode()
    before = thread_cpu_ns(stack.gate_pid)
    for token in tokens:
        await stream_once(target, chat_request(target, payload, f"Bearer {token}"), timeout=30)
    return (thread_cpu_ns(stack.gate_pid) - before) / 1e6 / count


async def _route_once(pool: Pool, model: str, conversation: str) -> None:
    """What the gate does per chat request to choose its upstream, and nothing else: order the
    upstreams, take the first, count it and record the conversation's holder, read the shaping
    limits of every upstream the request may be handed to, and release it when the stream ends."""
    attempts = await pool.route(model, CHAT, conversation)
    member = attempts.next()
    await pool.chosen(member, CHAT, conversation)
    await shaping_limits(attempts.members, model)
    member.release()


async def routing_alone(sockets: list[Path], key: str, *, requests: int, reps: int) -> dict[int, float]:
    """The routing code's own CPU per request (µs) with 1, 2 and 4 upstreams, timed in this process
    on the gate's own `Pool` in front of live synthetic upstreams (their health and `/props` read as
    the gate reads them, the background refreshes included), interleaved by repetition; the median.

    Whole requests on 2 shared cores vary by ±5% from one round to the next, so a 2% goal cannot be
    read from them; this isolates the part that differs with the number of upstreams."""
    pools = {n: Pool([(f"unix:{path}", AttachedServer(f"unix:{path}", key)) for path in sockets[:n]], "synthetic")
             for n in UPSTREAM_COUNTS}
    try:
        for pool in pools.values():  # the first request waits for every upstream's health and props
            await _route_once(pool, "synthetic", "warm-up")
        samples: dict[int, list[float]] = {n: [] for n in UPSTREAM_COUNTS}
        for rep in range(reps):
            for n in rotated(UPSTREAM_COUNTS, rep):
                started = time.thread_time()
                for i in range(requests):
                    await _route_once(pools[n], "synthetic", f"c{rep}-{i}")
                samples[n].append((time.thread_time() - started) / requests * 1e6)
        return {n: median(values) for n, values in samples.items()}
    finally:
        for pool in pools.values():
            await pool.close()


async def routing_cost(work: Path, *, streams: int, tokens: int, reps: int, max_tokens: int,
                       say: Say, requests: int = 200) -> dict[str, Any]:
    """One gate in front of 1, 2 and 4 upstreams: gate CPU per request and tokens/s against one upstream."""
    key = secrets.token_urlsafe(32)
    body = chat_body(real=False, max_tokens=tokens)
    with _synthetic_upstreams(work, max(UPSTREAM_COUNTS), key) as sockets:
        starts = {n: (lambda n=n: start_stack(f"fleet-{n}", sockets[:n], key, work, alias="synthetic",
                                              max_tokens=max_tokens)) for n in UPSTREAM_COUNTS}
        # Routing alone: N entries that are all the same upstream, so only the gate's choice differs.
        # One entry gets a stack of its own too, so that every stack compared here is measured in the
        # same state (a stack measured right after it ran the distinct-servers round is warmer than
        # one that sat idle meanwhile: in one run that alone made 2 and 4 entries look 1.24x dearer).
        alike = {n: (lambda n=n: start_stack(f"fleet-alike-{n}", sockets[:1] * n, key, work, alias="synthetic",
                                             max_tokens=max_tokens)) for n in UPSTREAM_COUNTS}
        with _stacks(starts) as stacks, _stacks(alike) as same:
            for n in UPSTREAM_COUNTS:  # warm-up: first connections, imports, every upstream's health
                await _round(stacks[n], streams, body)
                await _round(same[n], streams, body)
                await _one_token_round(same[n], 20)
            rounds: list[dict[int, dict[str, float]]] = []
            for rep in range(reps):
                found = {n: await _round(stacks[n], streams, body) for n in rotated(UPSTREAM_COUNTS, rep)}
                for n in rotated(UPSTREAM_COUNTS, rep):
                    found[n]["one_token_gate_ms"] = await _one_token_round(same[n], requests)
                    alike_round = await _round(same[n], streams, body)
                    found[n].update({f"alike_{name}": value for name, value in alike_round.items()})
                rounds.append(found)
                say(f"fleet routing: repetition {rep + 1}/{reps} done")
        alone = await routing_alone(sockets, key, requests=requests * 10, reps=max(reps, 5))
    summary: dict[int, dict[str, float]] = {}
    for n in UPSTREAM_COUNTS:
        summary[n] = {
            "gate_ms_per_request": median([r[n]["gate_ms_per_request"] for r in rounds]),
            "cpu_ratio": median([r[n]["gate_ms_per_request"] / r[1]["gate_ms_per_request"] for r in rounds]),
            "tokens_per_s": median([r[n]["tokens_per_s"] for r in rounds]),
            "tokens_ratio": median([r[n]["tokens_per_s"] / r[1]["tokens_per_s"] for r in rounds]),
            "failed": sum(streams - r[n]["ok"] for r in rounds),
            "one_token_gate_ms": median([r[n]["one_token_gate_ms"] for r in rounds]),
            "one_token_ratio": median([r[n]["one_token_gate_ms"] / r[1]["one_token_gate_ms"] for r in rounds]),
            "alike_gate_ms_per_request": median([r[n]["alike_gate_ms_per_request"] for r in rounds]),
            "alike_cpu_ratio": median([r[n]["alike_gate_ms_per_request"] / r[1]["alike_gate_ms_per_request"]
                                       for r in rounds]),
            "alike_tokens_ratio": median([r[n]["alike_tokens_per_s"] / r[1]["alike_tokens_per_s"] for r in rounds]),
            "alike_failed": sum(streams - r[n]["alike_ok"] for r in rounds),
            "routing_us": alone[n],
            "routing_added_us": alone[n] - alone[1],
        }
    for entry in summary.values():  # what routing adds, as a share of the gate's whole one-token request
        entry["routing_share"] = entry["routing_added_us"] / (summary[1]["one_token_gate_ms"] * 1000)
    return {"streams": streams, "tokens": tokens, "reps": reps, "requests": requests, "by_upstreams": summary,
            "rounds": rounds}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _redis(work: Path) -> Iterator[str | None]:
    """A private redis-server on a loopback port, without persistence; None where none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(work)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def _signing_key(work: Path) -> Path:
    path = work / "fleet-signing.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
    return path


async def _ttfts(stack: ServeStack, count: int) -> list[float]:
    target, tokens = await tokens_for(stack, count, 1)
    payload = json.dumps(chat_body(real=False, max_tokens=1)).encode()
    found = []
    for token in tokens:
        result = await stream_once(target, chat_request(target, payload, f"Bearer {token}"), timeout=30)
        if result.ok and result.ttft is not None:
            found.append(result.ttft * 1000)
    return found


async def redis_round_trip(work: Path, *, count: int, reps: int, max_tokens: int, say: Say) -> dict[str, Any]:
    """Two gates sharing Redis against one gate alone: what the shared replay check adds per request."""
    with _redis(work) as url:
        if url is None:
            say("fleet Redis: skipped, redis-server is not installed (apt-get install redis-server)")
            return {"skipped": "redis-server is not installed"}
        key = secrets.token_urlsafe(32)
        shared = ["--audience", "bench-fleet", "--signing-key-file", str(_signing_key(work)),
                  "--issuer", "broker-a", "--issuer", "broker-b"]
        with _synthetic_upstreams(work, 1, key) as sockets:
            def start(name: str, issuers: list[str], env: dict[str, str] | None) -> ServeStack:
                return start_stack(name, sockets[0], key, work, alias="synthetic", max_tokens=max_tokens,
                                   extra=issuers, env=env)

            starts = {
                "alone": lambda: start("fleet-alone", [], None),
                "a": lambda: start("fleet-a", shared, {REDIS_URL_ENV: url}),
                "b": lambda: start("fleet-b", [*shared[:4], "--issuer", "broker-b", "--issuer", "broker-a"],
                                   {REDIS_URL_ENV: url}),
            }
            with _stacks(starts) as stacks:
                await asyncio.sleep(7)  # tokens from the first seconds of Redis's run are refused
                alone: list[float] = []
                shared_ttfts: list[float] = []
                for rep in range(reps):
                    for name in rotated(["alone", "a", "b"], rep):
                        ttfts = await _ttfts(stacks[name], count)
                        (alone if name == "alone" else shared_ttfts).extend(ttfts)
                    say(f"fleet Redis: repetition {rep + 1}/{reps} done")
    if not alone or not shared_ttfts:
        return {"failed": "no request succeeded"}
    return {
        "count": len(shared_ttfts),
        "alone_ms": {"p50": percentile(alone, 50), "p99": percentile(alone, 99)},
        "redis_ms": {"p50": percentile(shared_ttfts, 50), "p99": percentile(shared_ttfts, 99)},
        "added_ms": {"p50": percentile(shared_ttfts, 50) - percentile(alone, 50),
                     "p99": percentile(shared_ttfts, 99) - percentile(alone, 99)},
    }


def render(found: dict[str, Any]) -> list[str]:
    """The fleet's rows for the report (pure)."""
    lines = []
    routing = found.get("routing")
    if routing:
        lines += [f"One gate in front of N synthetic upstreams, {routing['reps']} interleaved repetitions "
                  "(× 1 upstream: the median of per-repetition ratios). Routing's own cost (goal ≤ 1.02×) is "
                  "measured where only routing differs, with N entries that are all one synthetic server: "
                  f"{routing['streams']} streams × {routing['tokens']} tokens at once, and {routing['requests']} "
                  "one-token requests one after another. With N distinct servers the figures follow the "
                  "upstreams' capacity, which more upstreams add even on shared cores:", "",
                  f"| upstreams | same server, {routing['streams']} streams: gate CPU per stream | × 1 | tokens/s × 1 "
                  "| same server, one-token requests: gate CPU | × 1 | distinct servers, "
                  f"{routing['streams']} streams: tokens/s | × 1 | gate CPU per stream | failed |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for n, entry in routing["by_upstreams"].items():
            lines.append(f"| {n} | {entry['alike_gate_ms_per_request']:.2f} ms | {entry['alike_cpu_ratio']:.3f}× | "
                         f"{entry['alike_tokens_ratio']:.3f}× | "
                         f"{entry['one_token_gate_ms']:.3f} ms | {entry['one_token_ratio']:.3f}× | "
                         f"{entry['tokens_per_s']:,.0f} | {entry['tokens_ratio']:.3f}× | "
                         f"{entry['gate_ms_per_request']:.2f} ms | {entry['failed'] + entry['alike_failed']} |")
        lines += ["", "The routing code alone (the gate's own `Pool` in this process, in front of the live synthetic "
                  "upstreams, timed by thread CPU, interleaved; what a request costs to choose its upstream, count "
                  "it, record its holder and read the shaping limits of every candidate): "
                  + "; ".join(f"{n} upstream{'s' if n > 1 else ''} {entry['routing_us']:.1f} µs"
                              + (f" (+{entry['routing_added_us']:.1f} µs, {entry['routing_share']:.2%} of a "
                                 "one-token request's gate CPU)" if n > 1 else "")
                              for n, entry in routing["by_upstreams"].items()) + "."]
    redis = found.get("redis")
    if redis and "added_ms" in redis:
        lines += ["", f"Two gates on one Redis against a gate alone ({redis['count']} one-token requests through "
                  f"the gates on Redis, tokens negotiated first): time to first token "
                  f"{redis['alone_ms']['p50']:.2f} → {redis['redis_ms']['p50']:.2f} ms p50, "
                  f"{redis['alone_ms']['p99']:.2f} → {redis['redis_ms']['p99']:.2f} ms p99; the Redis round trip "
                  f"adds {redis['added_ms']['p50']:.2f} ms p50, {redis['added_ms']['p99']:.2f} ms p99."]
    elif redis:
        lines += ["", f"Two gates on one Redis: not measured ({redis.get('skipped') or redis.get('failed')})."]
    return lines
