"""The fleet's benchmark rows, run small: they measure without a failed request and report what they measured.

Nothing here checks a timing (CI machines are shared and noisy): only that one gate routes over 1, 2
and 4 synthetic upstreams without an error, that two gates on one Redis answer, and that the report
renders both.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llama_launcher.bench import fleet
from llama_launcher.bench.processes import run_loop

pytestmark = pytest.mark.real


@pytest.mark.timeout(240)
def test_fleet_rows_measure_routing_and_the_redis_round_trip(tmp_path: Path) -> None:
    said: list[str] = []
    routing = run_loop(fleet.routing_cost(tmp_path, streams=8, tokens=200, reps=1, max_tokens=1000,
                                          say=said.append))
    assert set(routing["by_upstreams"]) == {1, 2, 4}
    assert all(entry["failed"] == 0 for entry in routing["by_upstreams"].values()), routing
    assert all(entry["tokens_per_s"] > 0 for entry in routing["by_upstreams"].values())
    assert all(entry["alike_failed"] == 0 and entry["alike_gate_ms_per_request"] > 0
               for entry in routing["by_upstreams"].values()), routing
    assert all(entry["routing_us"] > 0 for entry in routing["by_upstreams"].values()), routing
    redis = run_loop(fleet.redis_round_trip(tmp_path, count=5, reps=1, max_tokens=1000, say=said.append))
    if shutil.which("redis-server") is None:
        assert "skipped" in redis
    else:
        assert redis["count"] == 10, redis  # every request through both gates on Redis answered
    text = "\n".join(fleet.render({"routing": routing, "redis": redis}))
    assert "| 4 |" in text and "Redis" in text and "The routing code alone" in text
