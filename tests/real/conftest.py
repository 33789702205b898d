"""Fixtures for the real-server tests: a whole serve stack per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import Stack, run_stack


@pytest.fixture(scope="module")
def stack(llama_server_binary: Path, model_path: Path) -> Iterator[Stack]:
    with run_stack("--llama-server", str(llama_server_binary), "--verbose") as running:
        yield running
