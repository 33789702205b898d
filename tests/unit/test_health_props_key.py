"""`/props` belongs to the llama-server running now: known by its key, hashed once per key (issue 18)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from health_upstream import ReadyUpstream

from llama_launcher.gate import health
from llama_launcher.gate.health import Health
from llama_launcher.master_key import MasterKey


def test_props_are_read_once_per_key_and_again_after_a_respawn(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    hashed: list[bytes] = []

    async def get_json(upstream: Any, path: str, *, timeout: float) -> tuple[int, Any]:
        reads.append(path)
        return 200, {"modalities": {"vision": True}, "default_generation_settings": {"n_ctx": 4096}}

    real_sha256 = hashlib.sha256

    def sha256(data: bytes) -> Any:
        hashed.append(data)
        return real_sha256(data)

    monkeypatch.setattr(health, "get_json", get_json)
    monkeypatch.setattr(health.hashlib, "sha256", sha256)
    upstream = ReadyUpstream()
    state = Health(upstream, "m")
    assert not state.props_known

    async def scenario() -> None:
        await state.ensure_props()
        assert (state.props_known, state.vision, state.context) == (True, True, 4096)
        for _ in range(5):  # asked on every chat
            await state.ensure_props()
            assert state.props_known
        assert reads == ["/props"] and len(hashed) == 1
        upstream.key = MasterKey.generate()  # llama-server respawned with a new key
        assert not state.props_known
        await state.ensure_props()
        assert state.props_known and reads == ["/props", "/props"] and len(hashed) == 2

    asyncio.run(scenario())


def test_the_launchers_key_gives_one_header_object_for_its_life() -> None:
    key = MasterKey.generate()
    assert key.authorization() is key.authorization()
    assert key.authorization().startswith(b"Bearer ")


def test_a_ready_snapshot_is_dropped_the_moment_the_upstream_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop-33 CI failure: the gate served its cached 'ready' for up to half a second after
    llama-server died, so the broker granted a stream that met the respawn (502)."""
    async def get_json(upstream: Any, path: str, *, timeout: float) -> tuple[int, Any]:
        return 200, {}

    monkeypatch.setattr(health, "get_json", get_json)

    class Dying(ReadyUpstream):
        alive = True

        def is_ready(self) -> bool:
            return self.alive

    upstream = Dying()
    state = Health(upstream, "m")

    async def scenario() -> None:
        assert (await state.snapshot())["model_ready"] is True
        assert (await state.snapshot())["model_ready"] is True  # cached while it holds
        upstream.alive = False
        assert (await state.snapshot())["model_ready"] is False
        assert (await state.snapshot())["model_ready"] is False

    asyncio.run(scenario())
