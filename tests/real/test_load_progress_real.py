"""The gate's load progress follower against a real llama-server router (two presets of SmolLM2).

The router is started bare on a loopback port (with a key, and `LLAMA_CACHE` pointed at an empty
dir so it lists only the presets); the follower reads its `/models/sse` while `beta` loads.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llama_launcher.attached import AttachedServer
from llama_launcher.gate.load_progress import LoadProgress

pytestmark = pytest.mark.real

KEY = "test-router-key-0123456789"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def router_url(llama_server_binary: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("progress")
    (folder / "cache").mkdir()
    (folder / "models.ini").write_text(f"[alpha]\nmodel = {model_path}\nctx-size = 1024\n\n"
                                       f"[beta]\nmodel = {model_path}\nctx-size = 2048\n")
    port = _free_port()
    env = {**os.environ, "LLAMA_API_KEY": KEY, "LLAMA_CACHE": str(folder / "cache")}
    with (folder / "router.log").open("wb") as log:
        process = subprocess.Popen(
            [str(llama_server_binary), "--models-preset", str(folder / "models.ini"), "--models-max", "1",
             "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (folder / "router.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the router did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _status(client: httpx.AsyncClient, name: str) -> str:
    listing = (await client.get("/v1/models")).json()
    return next(model["status"]["value"] for model in listing["data"] if model["id"] == name)


def test_the_follower_reads_the_fraction_while_a_model_loads_and_closes_after(router_url: str) -> None:
    async def scenario() -> tuple[list[float], dict[str, object], bool]:
        progress = LoadProgress(AttachedServer(router_url, KEY))
        seen: list[float] = []
        async with httpx.AsyncClient(base_url=router_url, headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=30) as client:
            assert await _status(client, "beta") == "unloaded"
            progress.watch(["beta"])  # as the gate's health does once it lists beta loading
            await asyncio.sleep(1.0)  # the router replays nothing: be connected before the load starts
            assert (await client.post("/models/load", json={"model": "beta"})).status_code == 200
            deadline = time.monotonic() + 30
            while await _status(client, "beta") != "loaded":
                assert time.monotonic() < deadline
                for _ in range(20):
                    fraction = progress.of("beta").get("progress")
                    if isinstance(fraction, float) and (not seen or seen[-1] != fraction):
                        seen.append(fraction)
                    await asyncio.sleep(0.002)
            await asyncio.sleep(0.3)
            after = progress.of("beta")
            progress.watch([])  # nothing loading: the stream closes
            await asyncio.sleep(0.3)
            closed = progress._task is None or progress._task.done()
        return seen, after, closed

    seen, after, closed = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert seen, "no fraction reached the follower while beta loaded"
    assert all(0.0 <= fraction <= 1.0 for fraction in seen) and seen == sorted(seen)
    assert after == {}, "a loaded model has no fraction"
    assert closed
