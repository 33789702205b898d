"""The P7 accounting: per-thread nanosecond counters, and the idle background taken out."""

from __future__ import annotations

import os
import threading
import time

import pytest

from llama_launcher.bench.processes import thread_cpu_ns
from llama_launcher.bench.report import render_markdown
from llama_launcher.bench.request_cost import net_ms_per_request


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_thread_counters_count_every_thread_in_nanoseconds() -> None:
    spun, release = threading.Event(), threading.Event()

    def work() -> None:
        _spin(0.02)
        spun.set()
        release.wait()

    before = thread_cpu_ns(os.getpid())
    worker = threading.Thread(target=work)
    worker.start()
    _spin(0.02)
    spun.wait()
    spent = thread_cpu_ns(os.getpid()) - before  # read while the worker lives: an ended thread drops out
    release.set()
    worker.join()
    # both threads' 20 ms, far below the 10 ms granularity of /proc/PID/stat's ticks
    assert 30e6 <= spent < 200e6


def test_the_idle_background_is_subtracted_over_the_window() -> None:
    # 100 requests over 2 s cost 150 ms; 10 ms/s of idle pulls over those 2 s are not theirs
    assert net_ms_per_request(150_000_000, 2.0, 10.0, 100) == pytest.approx(1.3)


def test_the_report_says_how_p7_was_measured() -> None:
    results = {"machine": {}, "command": "bench", "duration_s": 1.0, "rows": [],
               "gate_cost": {"real": {"kept_alive": True, "count": 20, "rounds": [{}, {}, {}],
                                      "gate_ms_per_request": 0.4321, "broker_ms_per_request": 0.001,
                                      "relay": {"ms_per_request": 0.25}}},
               "idle_cpu": {"gate": 0.5, "broker": 0.25}}
    text = render_markdown(results)
    assert ("- Gate CPU per lane request (P7, real upstream, one kept-alive connection, 20 requests × 3 rounds, "
            "tokens negotiated first, idle background subtracted): 0.432 ms (the broker meanwhile: 0.001 ms); "
            "the bare relay on the same requests (`Connection: close`), in rounds between: 0.250 ms.") in text
    assert "- Idle (nothing asked): gate 0.50 ms of CPU per second, broker 0.25 ms of CPU per second." in text


def test_the_report_shows_a_budgeted_users_p7_beside_the_owners() -> None:
    entry = {"kept_alive": False, "count": 200, "rounds": [{}], "gate_ms_per_request": 0.6,
             "broker_ms_per_request": 0.05, "negotiation_ms_per_request": {"gate": 0.4, "broker": 1.25},
             "budgeted": {"gate_ms_per_request": 0.625, "broker_ms_per_request": 0.125,
                          "negotiation_ms_per_request": {"gate": 0.4, "broker": 1.75}}}
    text = render_markdown({"machine": {}, "command": "bench", "duration_s": 1.0, "rows": [],
                            "gate_cost": {"synthetic": entry}})
    assert ("; a user with a token budget (each grant reserved, each end settled by the gate's report), in rounds "
            "between: 0.625 ms (the broker: 0.125 ms); a negotiation's CPU, owner then that user: gate 0.400 / "
            "0.400 ms, broker 1.250 / 1.750 ms.") in text
