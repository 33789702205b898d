"""Shared fixtures: the real llama-server binary and the real SmolLM2 model, never mocks.

They are found or fetched exactly as ``serve`` does; a test run on a fresh machine builds
llama-server once (the test command's install step normally has done it already).

Helpers shared between the suites (the gate's fakes, the hostile cases' runner, a whole serve
stack) live in `tests/support/`, which pytest's `pythonpath` setting puts on the path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer

from llama_launcher import model, provision
from llama_launcher.paths import cache_dir

pytest.register_assert_rewrite("gate_fakes", "hostile_support", "stack")


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    return provision.ensure_llama_server(None, cache_dir()).path


@pytest.fixture(scope="session")
def model_path() -> Path:
    return model.ensure_default_model(cache_dir())


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a loopback port, without persistence; stopped after the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _forget_test_secrets() -> Iterator[None]:
    """Each test's keys are registered for redaction for the rest of the process; without this the
    list grows over the run and scrubbing each log record costs more and more (whole tests slowed
    from 0.2 s to 5 s)."""
    from llama_direct import redaction

    with redaction._lock:
        lasting, ephemeral = set(redaction._lasting), dict(redaction._ephemeral)
    yield
    with redaction._lock:
        redaction._lasting.clear()
        redaction._lasting.update(lasting)
        redaction._ephemeral.clear()
        redaction._ephemeral.update(ephemeral)
        redaction._rebuild()
