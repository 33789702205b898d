"""The page's Stop in router mode (issue 25, finding 5): it must stop the child that generates.

llama-server's router forwards `DELETE /v1/stream` to the child without the key, so the child
answered 401 and went on (11.7 CPU-seconds in the 15 s after Stop); the gate now sends the stop to
the child itself (`gate/stream_stop.py`). Measured as CPU-seconds of the router and its children,
as in test_stream_lifetime_real.py, whose helpers and margins this reuses. The resume window is
set far longer than the test, so only the Stop can be what stops the stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from stack import Stack, run_stack
from test_stream_lifetime_real import (
    IDLE_CPU,
    IDLE_WINDOW,
    LONG,
    _cpu_over,
    _headers,
    _resume_status,
    _start_and_leave,
)

pytestmark = pytest.mark.real

STOP_WITHIN = 15.0
"""Seconds the child may take to go quiet after Stop: liveness only (it takes well under one on a quiet
box); the resume's 404 below is what tells a stopped stream from one that merely ended."""


@pytest.fixture(scope="module")
def router(llama_server_binary: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    preset = tmp_path_factory.mktemp("preset") / "models.ini"
    preset.write_text(f"[alpha]\nmodel = {model_path}\nctx-size = 4096\n")
    with run_stack("--llama-server", str(llama_server_binary), "--models-preset", str(preset),
                   "--resume-window", "3600", "--verbose") as running:
        yield running


def test_stop_in_router_mode_leaves_the_child_idle(router: Stack) -> None:
    grant = router.negotiate(model="alpha", resumable=True, max_tokens=2048)
    conversation = grant["conversation_id"]
    _start_and_leave(router, grant, {**LONG, "model": "alpha"})  # the page cancels its fetch first
    assert _cpu_over(router, 1.0) > IDLE_CPU / IDLE_WINDOW, "the stream was not generating at Stop"
    cancel = router.negotiate(cancel=conversation)  # as the page asks: no model named
    answer = httpx.delete(f"{cancel['url']}/v1/stream", params={"conv_id": conversation},
                          headers=_headers(cancel), timeout=30)
    assert answer.status_code == 204
    # The gate's stop to the child runs beside the router's answer, later on a loaded machine: wait for
    # a quiet second (bounded), then hold the child to a whole idle window.
    deadline = time.monotonic() + STOP_WITHIN
    while _cpu_over(router, 1.0) > IDLE_CPU / IDLE_WINDOW:
        assert time.monotonic() < deadline, f"llama-server still generated {STOP_WITHIN:.0f} s after Stop"
    used = _cpu_over(router, IDLE_WINDOW)
    assert used < IDLE_CPU, f"llama-server used {used:.2f} CPU-s in {IDLE_WINDOW} s after Stop"
    # Cancelled, not finished on its own: a finished stream would stay resumable for the hour's window.
    assert _resume_status(router, conversation) == 404
