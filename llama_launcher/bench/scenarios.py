"""What the benchmark measures: interleaved rounds per lane, negotiation, verification, memory, app load.

Each function drives the lanes of a `Bed` and returns plain dicts (the raw JSON), which
`summary.py` reduces and `report.py` renders. Rounds are interleaved: every repetition runs each
lane once, in an order rotated by one each time, so drift in the machine (thermal, another
tenant) lands on every lane alike, and medians are taken over repetitions.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
import timeit
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from broker.signing_keys import KeyRing
from llama_direct.lanes import CHAT_PATH, CHAT_ROUTE
from llama_direct.tokens import Grant, mint, verify
from llama_launcher.bench import haproxy_anchor, request_cost
from llama_launcher.bench.beds import LANES, Bed
from llama_launcher.bench.clients import (
    StreamProtocol,
    StreamResult,
    Target,
    chat_request,
    negotiate,
    open_stream,
    stream_once,
)
from llama_launcher.bench.haproxy_anchor import Anchor
from llama_launcher.bench.processes import Child, cpu_seconds, rss_kib
from llama_launcher.bench.stats import median, percentile

REAL_PROMPT = "Write a long story about a robot who learns to paint. Describe every color it mixes."
Say = Callable[[str], None]
T = TypeVar("T")
NEGOTIATED = ("direct", "before", "budgeted")
"""The lanes whose request needs a token from a broker first: this code's, REV's (`--before`), and this
code's for a user with a token budget (`Bed.budgeted`)."""
FIRST_TOKEN_PROCESSES = ("gate", "broker", "relay", "before_gate", "before_broker")


def chat_body(*, real: bool, max_tokens: int, pace: float = 0.0) -> dict[str, Any]:
    """The same request for every lane; the synthetic upstream reads its pace from `user`."""
    if real:
        return {"messages": [{"role": "user", "content": REAL_PROMPT}], "max_tokens": max_tokens, "stream": True,
                "temperature": 0, "seed": 7}
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": True,
            "user": f"bench-pace:{pace:g}"}


def rotated(lanes: Sequence[T], rep: int) -> list[T]:
    """The order of one repetition: each lane (or upstream count) goes first in turn."""
    shift = rep % len(lanes)
    return [*lanes[shift:], *lanes[:shift]]


def _failed(negotiation: float | None = None) -> StreamResult:
    now = time.perf_counter()
    return StreamResult(status=0, started=now, first=None, ended=now, chunks=0, tokens=0, done=False,
                        negotiation=negotiation)


async def _lane_target(bed: Bed, lane: str, max_tokens: int) -> tuple[Target, str | None, float | None]:
    if lane not in NEGOTIATED:
        return bed.target(lane), bed.authorization(lane), None
    stack = bed.stack_for(lane)
    credential = bed.budgeted if lane == "budgeted" and bed.budgeted is not None else stack.access_token
    seconds, answer = await negotiate(Target(stack.public, "/"), credential, {"max_tokens": max_tokens})
    url = urllib.parse.urlsplit(answer["url"])
    assert url.hostname is not None and url.port is not None
    return Target((url.hostname, url.port), url.path + CHAT_PATH), f"Bearer {answer['token']}", seconds


async def one_stream(bed: Bed, lane: str, body: dict[str, Any], *, timeout: float) -> StreamResult:
    """One whole request on one lane (negotiating first on the direct lane); a failure is a result too."""
    negotiation = None
    try:
        target, authorization, negotiation = await _lane_target(bed, lane, body["max_tokens"])
        request = chat_request(target, json.dumps(body).encode(), authorization)
        return await stream_once(target, request, timeout=timeout, negotiation=negotiation)
    except (OSError, TimeoutError):
        return _failed(negotiation)


async def open_held(bed: Bed, lane: str, body: dict[str, Any]) -> StreamProtocol | None:
    """A stream left open (for memory and soak): returns once its first event came, or None."""
    try:
        target, authorization, _ = await _lane_target(bed, lane, body["max_tokens"])
        protocol = await open_stream(target, chat_request(target, json.dumps(body).encode(), authorization))
        async with asyncio.timeout(30):
            await protocol.first_event
    except (OSError, TimeoutError):
        return None
    return protocol if protocol.first is not None else None


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def _result_dict(result: StreamResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "status": result.status,
        "ttft_s": result.ttft,
        "duration_s": result.ended - result.started,
        "started": result.started,
        "ended": result.ended,
        "chunks": result.chunks,
        "tokens": result.tokens,
        "negotiation_s": result.negotiation,
    }


async def run_round(bed: Bed, lane: str, concurrency: int, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """`concurrency` streams at once on one lane; their results, the wall time and each process's CPU."""
    pids = bed.pids()
    before, client_before = _cpu(pids), time.process_time()
    results = await asyncio.gather(*(one_stream(bed, lane, body, timeout=timeout) for _ in range(concurrency)))
    after, client_after = _cpu(pids), time.process_time()
    wall = max(r.ended for r in results) - min(r.started for r in results)
    cpu = {name: after[name] - before[name] for name in pids}
    cpu["client"] = client_after - client_before
    return {"lane": lane, "concurrency": concurrency, "wall_s": wall, "cpu_s": cpu,
            "streams": [_result_dict(r) for r in results]}


async def throughput(bed: Bed, *, real: bool, levels: Sequence[int], tokens: dict[int, int], reps: int,
                     lanes: Sequence[str] = LANES, pace: float = 0.0, timeout: float = 120.0,
                     say: Say = print) -> list[dict[str, Any]]:
    """Every lane at each concurrency, interleaved by repetition.

    Warm-up first: a round per lane (first connections, imports, caches), and one at the highest
    concurrency, which on llama-server fills every slot's prompt cache once for all lanes.
    """
    rounds: list[dict[str, Any]] = []
    warm = chat_body(real=real, max_tokens=min(tokens.values()), pace=pace)
    for lane in lanes:
        await run_round(bed, lane, 1, warm, timeout=timeout)
    await run_round(bed, lanes[0], max(levels), warm, timeout=timeout)
    for concurrency in levels:
        body = chat_body(real=real, max_tokens=tokens[concurrency], pace=pace)
        for rep in range(reps):
            for lane in rotated(lanes, rep):
                found = await run_round(bed, lane, concurrency, body, timeout=timeout)
                found.update(upstream=bed.name, rep=rep)
                rounds.append(found)
            say(f"{bed.name}: {concurrency} stream(s), repetition {rep + 1}/{reps} done")
    return rounds


async def first_token(bed: Bed, count: int, lanes: Sequence[str] = ("raw", "relay", "direct"),
                      anchor: Anchor | None = None, *, real: bool = False) -> dict[str, Any]:
    """Added time to first token, alone: one-token streams one after another, lanes interleaved.

    Nothing else runs, so this is each lane's own latency (the direct lane's request half:
    parse, verify, check, shape, connect), not the scheduling noise of a saturated machine.
    The direct lane's token is negotiated before its request's clock and CPU window start; the
    negotiation is timed apart (`negotiation_latency`, and `request_cost` for its CPU). CPU is read
    from the per-thread scheduler counters, and each process's idle background, measured in a quiet
    window first, is subtracted over the window's wall time.

    `anchor`: HAProxy in the gate's place (`haproxy_anchor`), measured as one more lane, its token
    minted before the clock starts as the direct lane's is negotiated before it. A bed with a
    `before` stack measures it as one more lane, `before`, negotiated as `direct` is; a bed with a
    budgeted user, `budgeted`, the direct lane negotiated by that user (its reservation, before the clock). `real`: the
    real model's prompt (the bed's upstream is llama-server).
    """
    body = chat_body(real=real, max_tokens=1)
    payload = json.dumps(body).encode()
    pids = {name: pid for name, pid in bed.pids().items() if name in FIRST_TOKEN_PROCESSES}
    if bed.before is not None and "before" not in lanes:
        lanes = (*lanes, "before")
    if bed.budgeted is not None and "budgeted" not in lanes:
        lanes = (*lanes, "budgeted")
    if anchor is not None:
        lanes = (*lanes, haproxy_anchor.LANE)
        pids[haproxy_anchor.LANE] = anchor.pid
    samples: dict[str, list[float]] = {lane: [] for lane in lanes}
    idle = await request_cost.idle_cpu(pids, request_cost.IDLE_WINDOW_S)
    spent = {lane: dict.fromkeys(pids, 0.0) for lane in lanes}
    for rep in range(count):
        for lane in rotated(lanes, rep):
            sent, authorization = payload, None
            try:
                if lane == haproxy_anchor.LANE and anchor is not None:
                    target, authorization = anchor.target, anchor.authorization()
                    sent = json.dumps(anchor.body(body)).encode()
                else:
                    target, authorization, _ = await _lane_target(bed, lane, body["max_tokens"])
            except (OSError, TimeoutError):
                continue
            before, started = request_cost.thread_cpu_ns_of(pids), time.perf_counter()
            try:
                found = await stream_once(target, chat_request(target, sent, authorization), timeout=10)
            except (OSError, TimeoutError):
                found = _failed()
            after, wall = request_cost.thread_cpu_ns_of(pids), time.perf_counter() - started
            if found.ttft is not None:
                samples[lane].append(found.ttft * 1000)
            for name in pids:
                spent[lane][name] += (after[name] - before[name]) / 1e6 - idle[name] * wall
    return {lane: {"count": len(values), "p50_ms": percentile(values, 50) if values else None,
                   "p99_ms": percentile(values, 99) if values else None,
                   "cpu_ms_per_request": sum(spent[lane].values()) / count,
                   "cpu_ms_per_request_by_process": {name: ms / count for name, ms in spent[lane].items()
                                                     if ms / count >= 0.005}}
            for lane, values in samples.items()}


async def negotiation_latency(bed: Bed, count: int) -> dict[str, Any]:
    """`count` negotiations one after another through the public port, as a script would make them."""
    public = Target(bed.stack.public, "/")
    samples = []
    for _ in range(count):
        seconds, _ = await negotiate(public, bed.stack.access_token, {"max_tokens": 64})
        samples.append(seconds)
    return {"count": count, "p50_ms": percentile(samples, 50) * 1000, "p99_ms": percentile(samples, 99) * 1000,
            "samples_ms": [s * 1000 for s in samples]}


def verification_cost(count: int) -> dict[str, Any]:
    """`llama_direct.tokens.verify` on one minted token, per call, for each algorithm (as the gate calls it)."""
    found: dict[str, Any] = {}
    grant = Grant(routes=(CHAT_ROUTE,), model="bench", max_tokens=64)
    for algorithm in ("EdDSA", "ES256"):
        with tempfile.TemporaryDirectory(prefix="ldb-keys-") as keys_dir:
            now = time.time()
            ring = KeyRing(Path(keys_dir), algorithm)
            ring.load_or_create(now)
            keys = ring.public_keyset(now)
            token = mint(ring.current, issuer="iss", audience="aud", subject="bench", scope="chat", grant=grant,
                         now=now).token

            def check(token: str = token, keys: Any = keys) -> None:
                verify(token, keys=keys, audience="aud", issuer="iss", now=time.time())

            public_key = keys.keys[ring.current.kid][1]
            primitive = signature_check_alone(token, public_key)
            openssl = signature_check_alone(token, public_key, openssl=True)
            runs = [tuple(timeit.timeit(f, number=count) / count for f in (check, primitive, openssl))
                    for _ in range(5)]
            whole, alone, with_openssl = (median([r[i] for r in runs]) * 1e6 for i in range(3))
            found[algorithm] = {"count": count, "us_per_verify": whole, "us_primitive": alone,
                                "us_overhead": whole - alone, "us_primitive_openssl": with_openssl}
    return found


def signature_check_alone(token: str, public_key: Any, *, openssl: bool = False) -> Callable[[], object]:
    """The signature check alone, on the same token, as the gate makes it: the floor of `verify`.

    The gate checks Ed25519 with libsodium (PyNaCl) and ES256 with OpenSSL (`cryptography`);
    `openssl` times Ed25519 through `cryptography` too, the check the gate made before.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from nacl.bindings import crypto_sign_open

    signing_input, _, signature_b64 = token.rpartition(".")
    signature = base64.urlsafe_b64decode(signature_b64 + "=" * (-len(signature_b64) % 4))
    message = signing_input.encode()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        algorithm = ec.ECDSA(hashes.SHA256())
        return lambda: public_key.verify(der, message, algorithm)
    if openssl:
        return lambda: public_key.verify(signature, message)
    raw_key = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return lambda: crypto_sign_open(signature + message, raw_key)


async def held_memory(bed: Bed, streams: int, *, batch: int = 50, settle: float = 1.0, say: Say = print
                      ) -> dict[str, Any]:
    """Gate RSS with `streams` slow streams held open through the lane, against its level before.

    A first batch is opened and closed before the reference reading, so that what the first
    streams allocate once (buffers, caches, code paths run for the first time) is not counted
    per stream.
    """
    gate = bed.stack.gate_pid
    body = chat_body(real=False, max_tokens=10_000, pace=0.2)
    warm = await asyncio.gather(*(open_held(bed, "direct", body) for _ in range(min(batch, streams))))
    for protocol in warm:
        if protocol is not None:
            protocol.close()
    await asyncio.sleep(settle)
    before = median([rss_kib(gate) for _ in range(3)])
    held: list[StreamProtocol] = []
    failed = 0
    for start in range(0, streams, batch):
        opened = await asyncio.gather(*(open_held(bed, "direct", body) for _ in range(min(batch, streams - start))))
        held += [p for p in opened if p is not None]
        failed += sum(1 for p in opened if p is None)
    await asyncio.sleep(settle)
    alive = sum(1 for p in held if not p.finished.done())
    during = median([rss_kib(gate) for _ in range(3)])
    for protocol in held:
        protocol.close()
    await asyncio.sleep(settle)
    after = rss_kib(gate)
    say(f"memory: {alive} streams held, gate RSS {before} -> {during} KiB")
    return {"streams": streams, "held": alive, "failed": failed, "rss_before_kib": before, "rss_held_kib": during,
            "rss_after_kib": after, "kib_per_stream": (during - before) / alive if alive else None}


async def app_load(bed: Bed, work: Path, *, reps: int, concurrency: int, max_tokens: int, pace: float,
                   slow: int, hammers: int, settle: float = 3.0,
                   lanes: Sequence[str] = ("raw", "direct", "baseline"), say: Say = print) -> dict[str, Any]:
    """Lanes measured unloaded, then while a load process saturates the broker, then unloaded again.

    The broker has no CPU-bound route of its own, so the load is `slow` concurrent slow baseline
    streams (the broker relays each of them) plus `hammers` loops of `POST /direct-stream` (each
    one signs a token): the costliest work a real app's users give it.
    """
    body = chat_body(real=False, max_tokens=max_tokens, pace=pace)
    phases: dict[str, list[dict[str, Any]]] = {"unloaded": [], "loaded": []}

    async def measure(phase: str, count: int, offset: int) -> None:
        for rep in range(count):
            for lane in rotated(lanes, rep + offset):
                found = await run_round(bed, lane, concurrency, body, timeout=120)
                found.update(upstream=bed.name, rep=rep + offset, phase=phase)
                phases[phase].append(found)

    before = (reps + 1) // 2
    await measure("unloaded", before, 0)
    load = Child.python(
        "load", "llama_launcher.bench.load",
        ["--host", bed.stack.public[0], "--port", str(bed.stack.public[1]), "--slow", str(slow),
         "--hammers", str(hammers), "--seconds", "600"],
        work / "load.log", env={"BENCH_ACCESS_TOKEN": bed.stack.access_token},
    )
    try:
        await asyncio.sleep(settle)
        broker_before = cpu_seconds(bed.stack.broker_pid)
        started = time.perf_counter()
        await measure("loaded", reps, 0)
        broker_busy = (cpu_seconds(bed.stack.broker_pid) - broker_before) / (time.perf_counter() - started)
    finally:
        load.stop()
    await asyncio.sleep(settle / 3)
    await measure("unloaded", reps - before, before)
    say(f"app load: broker busy {broker_busy:.0%} of a core while loaded")
    return {"concurrency": concurrency, "max_tokens": max_tokens, "pace": pace, "slow": slow, "hammers": hammers,
            "broker_cpu_share": broker_busy, "load_log": load.log_tail(5), "rounds": phases}
