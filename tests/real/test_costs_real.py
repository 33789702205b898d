"""What one request may cost the REAL llama-server through the lane (issue 14, section A and B).

Each costly body goes through the whole stack (`serve --upstream`, the gate in front of a
llama-server this module starts, so its pid is known). Each body must be refused, or else:

- cost llama-server no more CPU than three plain requests with the same `max_tokens`, measured in the same
  test (CPU-seconds of its process: the wall clock is stretched by whatever else the machine runs);
- grow llama-server's resident memory (VmHWM after `clear_refs`, else VmRSS) by under 64 MB;
- delay a concurrent plain request's first token by no more than a plain request's own time.

The bodies come in two kinds: those over a bound, which llama-server 11434 would take (for example
`repeat_last_n: 1e9`, measured at 8 s and +3.8 GB), and those just inside every bound, which the
gate forwards, so the bounds themselves are shown to be cheap. Hostile JSON schemas, refused or
at the bound, must neither stall nor crash the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from forwarder import Forwarder
from recorded_lane import fresh_token, stack_in_front
from stack import Stack

from llama_launcher.gate.bounds import (
    MAX_BREAKERS,
    MAX_PATTERN_BYTES,
    MAX_SCHEMA_REPEATS,
    MAX_STOP_BYTES,
    MAX_STOP_STRINGS,
)
from llama_launcher.server_args import ServerOptions

pytestmark = [pytest.mark.real, pytest.mark.timeout(600)]

ALIAS = "smollm2-costs"
CONTEXT = 2048
MAX_TOKENS = 8
MB = 1024 * 1024
PLAIN: dict[str, Any] = {"messages": [{"role": "user", "content": "Name three colours."}], "stream": True,
                         "max_tokens": MAX_TOKENS}
GATE_OWN = (b"GET /health ", b"GET /slots ", b"GET /props ")


@dataclass
class Lane:
    stack: Stack
    forwarder: Forwarder
    pid: int

    def token(self) -> str:
        return fresh_token(self.stack, MAX_TOKENS)

    def cpu(self) -> float:
        """llama-server's CPU-seconds so far: what a request cost it, whatever else the machine runs."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def chat(self, body: dict[str, Any]) -> Answer:
        """One streamed chat through the lane, timed: status, seconds to the first chunk and to the end,
        and llama-server's CPU-seconds over it."""
        token = self.token()
        cpu = self.cpu()
        started = time.monotonic()
        first = None
        with httpx.stream("POST", f"{self.stack.base}/direct/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {token}"}) as response:
            text = b""
            for chunk in response.iter_bytes():
                if first is None and b"data:" in chunk:
                    first = time.monotonic() - started
                text += chunk
        return Answer(response.status_code, first, time.monotonic() - started, text, self.cpu() - cpu)

    def forwarded(self) -> list[bytes]:
        return self.forwarder.requests(lambda line: not line.startswith(GATE_OWN))

    def memory_mark(self) -> None:
        """Reset the peak so that VmHWM measures this request alone (5: reset the high-water mark)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def memory(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} for llama-server")

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return bool(self.stack.gate_health()["model_ready"])


@dataclass
class Answer:
    status: int
    first: float | None
    total: float
    text: bytes
    cpu: float


@pytest.fixture(scope="module")
def lane(llama_server_binary: Path, model_path: Path) -> Iterator[Lane]:
    options = ServerOptions(binary=llama_server_binary, model=model_path, alias=ALIAS, max_tokens=2048,
                            ctx_size=CONTEXT * 2, parallel=2)
    with stack_in_front(options, "--max-tokens", "512") as (stack, forwarder, server):
        assert server.pid is not None
        yield Lane(stack, forwarder, server.pid)


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


OVER: dict[str, dict[str, Any]] = {
    "repeat_last_n_a_billion": {"repeat_last_n": 1_000_000_000, "repeat_penalty": 1.1},
    "repeat_last_n_one_past_the_context": {"repeat_last_n": CONTEXT + 1, "repeat_penalty": 1.1},
    "dry_penalty_last_n_int32_max": {"dry_multiplier": 0.8, "dry_penalty_last_n": 2**31 - 1},
    "dry_eight_two_character_breakers": {"dry_multiplier": 0.8, "dry_sequence_breakers": ["ee"] * 8},
    "dry_2000_one_character_breakers": {"dry_multiplier": 0.8,
                                        "dry_sequence_breakers": [chr(33 + i % 90) for i in range(2000)]},
    "stop_2000_strings": {"stop": [f"never{i}" for i in range(2000)]},
    "stop_one_string_of_1mb": {"stop": "x" * MB},
    "template_kwargs_over_messages": {"chat_template_kwargs": {"messages": [{"role": "user", "content": "x"}]}},
    "schema_a_million_items": {"response_format": _schema({"type": "array", "items": {"type": "string"},
                                                           "minItems": 1_000_000})},
    "schema_20_levels_deep": {"response_format": _schema(_deep(20))},
    "schema_nested_pattern": {"response_format": _schema({"type": "string",
                                                          "pattern": "(" * 2000 + "a" + ")" * 2000})},
    "schema_integer_bound_at_the_int64_edge": {"response_format": _schema({"type": "integer",
                                                                            "exclusiveMinimum": 2**63 - 1})},
    "tool_schema_a_million_items": {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "array", "minItems": 10**6}}}}}]},
}

HALF_PATTERN = (MAX_PATTERN_BYTES - 1) // 2 - 1

AT_BOUND: dict[str, dict[str, Any]] = {
    "repeat_last_n_the_whole_context": {"repeat_last_n": CONTEXT, "repeat_penalty": 1.1,
                                        "frequency_penalty": 0.5, "presence_penalty": 0.5},
    "dry_at_every_bound": {"dry_multiplier": 0.8, "dry_penalty_last_n": CONTEXT, "dry_allowed_length": 1,
                           "dry_sequence_breakers": list("eats")[:MAX_BREAKERS]},
    "stop_at_every_bound": {"stop": [chr(65 + i) * MAX_STOP_BYTES for i in range(MAX_STOP_STRINGS)]},
    "schema_repeats_at_the_bound": {"response_format": _schema({"type": "object", "properties": {
        f"p{i}": {"type": "string", "maxLength": MAX_SCHEMA_REPEATS // 4} for i in range(4)}})},
    "schema_deep_at_the_bound": {"response_format": _schema(_deep(10))},
    "schema_nested_pattern_at_the_bound": {"response_format": _schema({
        "type": "string", "pattern": "(" * HALF_PATTERN + "a" + ")" * HALF_PATTERN})},
    "schema_alternation_pattern": {"response_format": _schema({
        "type": "string", "pattern": "^(" + "|".join("(a+)+b" for _ in range(60)) + ")$"})},
    "schema_integer_range_at_the_bound": {"response_format": _schema({"type": "integer", "minimum": -(10**15),
                                                                       "maximum": 10**15})},
    "logprobs_at_the_bound": {"logprobs": True, "top_logprobs": 20},
}


@dataclass
class Plain:
    """Three plain requests in a row, measured in the same test as the body they judge."""

    three: float
    """llama-server's CPU-seconds for three plain requests (and one DRY setup, `_with_dry_setup`)."""
    one: float
    first: float
    allowance: float = 0.0
    """What a concurrent first token may wait on top of `one`: the DRY setup's, `_with_dry_setup`."""


def _plain(lane: Lane) -> Plain:
    runs = [lane.chat(PLAIN) for _ in range(3)]
    assert all(run.status == 200 for run in runs), [run.text[:200] for run in runs]
    totals = sorted(run.total for run in runs)
    firsts = sorted(run.first or run.total for run in runs)
    return Plain(three=sum(run.cpu for run in runs), one=totals[1], first=firsts[1])


def _check_cost(lane: Lane, body: dict[str, Any], plain: Plain) -> Answer:
    """Memory on every try; llama-server's CPU-seconds (not the wall clock, which other work on the
    machine stretches) as the best of three, since two busy cores make one try noisy."""
    times = []
    for _ in range(3):
        before = lane.memory("VmRSS")
        lane.memory_mark()
        answer = lane.chat({**PLAIN, **body})
        grown = max(lane.memory("VmHWM"), lane.memory("VmRSS")) - before
        assert grown < 64 * MB, f"llama-server grew by {grown / MB:.0f} MB"
        assert lane.alive(), "llama-server died"
        if answer.status != 200:
            assert answer.status == 400, answer.text[:300]
            return answer
        times.append(answer.cpu)
        if answer.cpu <= plain.three:
            return answer
    raise AssertionError(f"{min(times):.2f} CPU-s at best, three plain requests: {plain.three:.2f} CPU-s")


def _concurrent_delay(lane: Lane, body: dict[str, Any], plain: Plain) -> float:
    """How much later a plain request's first token comes while `body` is being served."""
    thread = threading.Thread(target=lambda: lane.chat({**PLAIN, **body}))
    thread.start()
    time.sleep(0.02)
    other = lane.chat(PLAIN)
    thread.join(120)
    assert other.status == 200
    return (other.first or other.total) - plain.first


def _check_concurrent_delay(lane: Lane, body: dict[str, Any], plain: Plain) -> None:
    """Two cores shared with other work make one try noisy, so the best of three counts: a body
    that stalls llama-server's loop (seconds, as `repeat_last_n: 1e9` did) fails all three."""
    delays = []
    for _ in range(3):
        delays.append(_concurrent_delay(lane, body, plain))
        if delays[-1] <= plain.one + plain.allowance:
            return
    raise AssertionError(f"a plain request's first token waited {min(delays):.2f}s more at best; "
                         f"a plain request takes {plain.one:.2f}s")


@pytest.mark.parametrize("name", sorted(OVER))
def test_a_body_over_a_bound_is_refused_naming_the_field_and_never_reaches_llama_server(lane: Lane, name: str) -> None:
    plain = _plain(lane)
    before = len(lane.forwarded())
    answer = _check_cost(lane, OVER[name], plain)
    assert answer.status == 400
    error = json.loads(answer.text)["error"]
    assert error["code"] == 400 and error.get("param"), error
    time.sleep(0.1)
    assert len(lane.forwarded()) == before, "llama-server received a body over a bound"
    _check_concurrent_delay(lane, OVER[name], plain)


DRY_DEFAULTS: dict[str, Any] = {"dry_multiplier": 0.8}
"""DRY at llama-server's own settings. Its setup scans the whole vocabulary once per breaker on
llama-server's main loop, and any `dry_multiplier` gets the default 4 breakers: that delayed a
concurrent first token by 1.5 s on 2 busy cores. Any DRY user of llama-server pays it, so DRY stays
allowed; what the gate's bounds must hold is that no body costs more than that default."""


def _with_dry_setup(lane: Lane, plain: Plain) -> Plain:
    """`plain`, allowed what DRY at its defaults costs on top (CPU and a concurrent first token's wait),
    each the best of three, measured in the same test as the body judged against it."""
    setup_cpu = min(lane.chat({**PLAIN, **DRY_DEFAULTS}).cpu for _ in range(3)) - plain.three / 3
    delay = min(_concurrent_delay(lane, DRY_DEFAULTS, plain) for _ in range(3))
    return dataclasses.replace(plain, three=plain.three + max(setup_cpu, 0.0), allowance=max(delay, 0.0))


@pytest.mark.parametrize("name", sorted(AT_BOUND))
def test_a_body_at_every_bound_costs_about_a_plain_request(lane: Lane, name: str) -> None:
    """A DRY body is judged against DRY at llama-server's defaults (`DRY_DEFAULTS`): its breakers are
    held to the default's count, so more of them (the over-bound cases) would cost more than that."""
    plain = _plain(lane)
    if name.startswith("dry_"):
        plain = _with_dry_setup(lane, plain)
    answer = _check_cost(lane, AT_BOUND[name], plain)
    assert answer.status == 200, answer.text[:300]
    _check_concurrent_delay(lane, AT_BOUND[name], plain)


def test_llama_server_survived_every_hostile_body_and_still_answers(lane: Lane) -> None:
    assert lane.alive()
    answer = lane.chat(PLAIN)
    assert answer.status == 200 and b"[DONE]" in answer.text


def test_the_baseline_shares_the_bounds(lane: Lane) -> None:
    """The broker's fallback goes through the same gate and the same shaping: the same refusal."""
    for _ in range(60):
        response = httpx.post(f"{lane.stack.base}/v1/chat/completions", timeout=60,
                              json={**PLAIN, **OVER["repeat_last_n_a_billion"]},
                              headers={"Authorization": f"Bearer {lane.stack.access_token}"})
        if response.status_code != 429:
            break
        time.sleep(float(response.headers.get("retry-after", "1")))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "repeat_last_n"
