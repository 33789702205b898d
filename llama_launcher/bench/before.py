"""`bench --before REV`: the code as it was at REV, measured in the same run as this code (issue 18's report).

REV's tree is written out of git (`git archive`, the working tree untouched) into the run's
scratch directory, and its own `serve` (`stack.start_stack(source=...)`) runs a second stack,
its own broker and gate, in front of the same upstream as this code's. The benchmark's client is
this code's: the wire (`POST /direct-stream`, then the lane request with its bearer token) is the
same on both sides of issue 18. The lanes, P7's rounds and the idle windows interleave the two
stacks; P5 loads REV's `llama_direct.tokens` into this process beside this code's and times both
verifiers, alternating, on the same token.
"""

from __future__ import annotations

import importlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import llama_launcher
from broker.signing_keys import KeyRing
from llama_direct.lanes import CHAT_ROUTE
from llama_direct.tokens import Grant, mint, verify
from llama_launcher.bench.stats import median


@dataclass(frozen=True)
class Tree:
    """REV's files, written out for the run."""

    rev: str
    commit: str
    path: Path


def repository() -> Path:
    """The checkout this code runs from (the benchmark runs in a clone, as CI's and docs/performance.md's do)."""
    return Path(llama_launcher.__file__).resolve().parent.parent


def materialise(rev: str, work: Path) -> Tree:
    """REV's whole tree under `work`, from the repository this code runs in; a one-line error if it
    is not a git checkout or has no such commit."""
    git = shutil.which("git")
    if git is None:
        raise RuntimeError("--before needs git, which is not installed")
    if not rev or rev.startswith("-"):
        raise RuntimeError(f"--before: {rev!r} is not a revision")
    root = repository()
    if subprocess.run([git, "-C", str(root), "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        raise RuntimeError(f"--before: {root} is not a git checkout")
    found = subprocess.run([git, "-C", str(root), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise RuntimeError(f"--before: no commit {rev!r} in {root} (a shallow clone? git fetch --unshallow)")
    commit = found.stdout.strip()
    archive = subprocess.run([git, "-C", str(root), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(f"--before: git archive {commit[:12]} failed")
    path = Path(tempfile.mkdtemp(prefix=f"before-{commit[:12]}-", dir=work))
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(path, filter="data")
    return Tree(rev, commit, path)


def load_beside(source: Path, modules: Sequence[str]) -> list[ModuleType]:
    """`modules` imported from `source`, beside this code's own modules of the same names.

    Their packages are taken out of `sys.modules` while REV's load (so that REV's modules import
    REV's), then put back; the loaded modules keep their own globals, so they run as REV's code.
    """
    packages = {name.split(".")[0] for name in modules}

    def ours(name: str) -> bool:
        return name.split(".")[0] in packages

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(source))
    importlib.invalidate_caches()
    try:
        loaded = [importlib.import_module(name) for name in modules]
    finally:
        sys.path.remove(str(source))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
    for module in loaded:
        if module.__file__ is None or not Path(module.__file__).resolve().is_relative_to(source.resolve()):
            raise RuntimeError(f"--before: {module.__name__} did not load from the revision's tree")
    return loaded


def verification_cost(source: Path, count: int, rounds: int = 5) -> dict[str, Any]:
    """P5 before and after: REV's `llama_direct.tokens.verify` (PyJWT at 34096c9) and this code's, on
    the same token and keys, called as each gate calls it, in `rounds` alternating runs of `count`."""
    old_tokens, old_keys = load_beside(source, ["llama_direct.tokens", "llama_direct.keys"])
    grant = Grant(routes=(CHAT_ROUTE,), model="bench", max_tokens=64)
    found: dict[str, Any] = {}
    for algorithm in ("EdDSA", "ES256"):
        with tempfile.TemporaryDirectory(prefix="ldb-keys-") as keys_dir:
            now = time.time()
            ring = KeyRing(Path(keys_dir), algorithm)
            ring.load_or_create(now)
            keys, old_set = ring.public_keyset(now), old_keys.PublicKeySet.from_jwks(ring.jwks(now))
            token = mint(ring.current, issuer="iss", audience="aud", subject="bench", scope="chat", grant=grant,
                         now=now).token
            started = int(now) - 10

            def after(token: str = token, keys: Any = keys, started: int = started) -> None:
                verify(token, keys=keys, audience="aud", issuer="iss", now=time.time(), not_issued_before=started)

            def before(token: str = token, keys: Any = old_set, started: int = started) -> None:
                old_tokens.verify(token, keys=keys, audience="aud", issuer="iss", now=time.time(),
                                  not_issued_before=started)

            before()  # REV's verifier accepts the token, or the figure would time a refusal
            runs = [_alternate(before, after, count, first_before=index % 2 == 0) for index in range(rounds)]
            found[algorithm] = {"count": count, "rounds": rounds,
                                "before_us": median([r[0] for r in runs]) * 1e6,
                                "after_us": median([r[1] for r in runs]) * 1e6}
    return found


def _alternate(before: Callable[[], None], after: Callable[[], None], count: int, *,
               first_before: bool) -> tuple[float, float]:
    """Seconds per call of each, timed one after the other, in the order given."""
    if first_before:
        old = timeit.timeit(before, number=count) / count
        return old, timeit.timeit(after, number=count) / count
    new = timeit.timeit(after, number=count) / count
    return timeit.timeit(before, number=count) / count, new


def _added(first: dict[str, Any], lane: str) -> str:
    """`+p50 / +p99` of a first-token lane over raw's, or a dash when the run did not measure it."""
    entry, raw = first.get(lane, {}), first.get("raw", {})
    if None in (entry.get("p50_ms"), entry.get("p99_ms"), raw.get("p50_ms"), raw.get("p99_ms")):
        return "–"
    return f"{entry['p50_ms'] - raw['p50_ms']:+.2f} / {entry['p99_ms'] - raw['p99_ms']:+.2f} ms"


def _cpu(first: dict[str, Any], lane: str, process: str) -> str:
    entry = first.get(lane)
    if not entry or entry.get("p50_ms") is None:
        return "–"
    return f"{entry.get('cpu_ms_per_request_by_process', {}).get(process, 0.0):.3f} ms"


def _ms(value: float | None, spec: str = ".3f", unit: str = " ms") -> str:
    return "–" if value is None else format(value, spec) + unit


def _paired(found: dict[str, float] | None) -> str:
    """`stats.paired_ratios` as `1.104× [0.930–1.250], 15 rounds`, or a dash."""
    if not found:
        return "–"
    return f"{found['median']:.3f}× [{found['p25']:.3f}–{found['p75']:.3f}], {found['rounds']:.0f} rounds"


def _p7_rows(cost: dict[str, Any]) -> list[tuple[str, ...]]:
    """P7's rows: the gate's CPU per lane request and the broker's meanwhile (the gate's usage reports
    settled), for the owner; then a user with a token budget, whose grants reserve and whose ends settle
    (this code's stack only: a REV before budgets has no such user), and what a negotiation costs each."""
    rows: list[tuple[str, ...]] = []
    for upstream, how, goal in (("real", "real model, kept-alive", "≤ 0.5 ms"),
                                ("synthetic", "synthetic, `Connection: close`", "–")):
        entry = cost.get(upstream, {})
        old, budgeted = entry.get("before", {}), entry.get("budgeted", {})
        owner_deal, budgeted_deal = entry.get("negotiation_ms_per_request", {}), budgeted.get(
            "negotiation_ms_per_request", {})
        rows += [
            (f"P7 gate CPU per lane request, {how}", goal, _ms(old.get("gate_ms_per_request")),
             _ms(entry.get("gate_ms_per_request")), "–", _ms(entry.get("relay", {}).get("ms_per_request"))),
            (f"P7 gate CPU, after ÷ before, median of per-round ratios [quartiles], {how}", "≤ 1.00", "–",
             _paired(old.get("gate_ratio")), "–", "–"),
            (f"P7 broker CPU per lane request, {how}", "–", _ms(old.get("broker_ms_per_request")),
             _ms(entry.get("broker_ms_per_request")), "–", "–"),
            (f"P7 gate / broker CPU per lane request, a user with a token budget, {how}", "–", "–",
             f"{_ms(budgeted.get('gate_ms_per_request'))} / {_ms(budgeted.get('broker_ms_per_request'))}", "–", "–"),
            (f"Broker CPU per negotiation, owner / a user with a token budget (its reservation), {how}", "–",
             _ms(old.get("negotiation_ms_per_request", {}).get("broker")),
             f"{_ms(owner_deal.get('broker'))} / {_ms(budgeted_deal.get('broker'))}", "–", "–"),
        ]
    return rows


def render(results: dict[str, Any]) -> list[str]:
    """The before/after table (issue 18's report): REV's stack and this code's from one run, with
    HAProxy in the gate's place and the bare relay beside them where the figure applies."""
    found = results.get("before")
    if not found:
        return []
    synthetic, real = results.get("first_token", {}), results.get("first_token_real", {})
    cost = results.get("gate_cost", {})
    verification = found.get("verification", {})
    idle_before, idle_after = found.get("idle_cpu", {}), results.get("idle_cpu", {})
    rows = [
        ("P3 added TTFT p50 / p99, synthetic (one-token streams)", "≤ +0.5 / +2 ms",
         _added(synthetic, "before"), _added(synthetic, "direct"), _added(synthetic, "haproxy"),
         _added(synthetic, "relay")),
        ("P3 added TTFT p50 / p99, real model (one-token streams)", "≤ +0.5 / +2 ms",
         _added(real, "before"), _added(real, "direct"), "–", _added(real, "relay")),
        *[(f"P3 added TTFT p50 / p99, {upstream}, a user with a token budget", "–", "–",
           _added(first, "budgeted"), "–", "–")
          for upstream, first in (("synthetic", synthetic), ("real model", real))],
        *[(f"P5 {algorithm} verification per token", "≤ 100 µs" if algorithm == "ES256" else "–",
           _ms(verification.get(algorithm, {}).get("before_us"), ".0f", " µs"),
           _ms(verification.get(algorithm, {}).get("after_us"), ".0f", " µs"), "–", "–")
          for algorithm in ("ES256", "EdDSA")],
        *_p7_rows(cost),
        ("CPU of the lane's own process per one-token request (the P3 synthetic run)", "–",
         _cpu(synthetic, "before", "before_gate"), _cpu(synthetic, "direct", "gate"),
         _cpu(synthetic, "haproxy", "haproxy"), _cpu(synthetic, "relay", "relay")),
        ("Idle gate CPU", "≤ 1 ms/s", _ms(idle_before.get("gate"), ".2f", " ms/s"),
         _ms(idle_after.get("gate"), ".2f", " ms/s"), "–", "–"),
        ("Idle broker CPU", "≤ 1 ms/s", _ms(idle_before.get("broker"), ".2f", " ms/s"),
         _ms(idle_after.get("broker"), ".2f", " ms/s"), "–", "–"),
    ]
    idle = results.get("idle", {})
    lines = ["", f"Before and after (issue 18), one run: the code at `{found['rev']}` ({found['commit'][:12]}) "
                 "as its own serve stack beside this code's, in front of the same upstreams, lanes and rounds "
                 f"interleaved; idle: {len(idle.get('windows', []))} window(s) of "
                 f"{idle.get('window_s', 0):g} s after {idle.get('settle_s', 0):g} s of quiet, every process "
                 "in the same windows:", "",
             f"| measure | goal | before ({found['rev']}) | after | HAProxy 2.6 in the gate's place | "
             "bare relay (floor) |", "|---|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
