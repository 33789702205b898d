"""The launcher's API (`llama_launcher.lane`) with the real llama-server: a host app's lane.

Each test starts a lane on a data dir of its own, mounts the broker on it (`broker.mount.mounted_core`)
and streams a reply through the lane with a token the host minted: the gate trusts the host's keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lane_host import ORIGIN, negotiate, stream, stream_once

from broker.mount import mounted_core
from llama_launcher.bench.processes import descendants
from llama_launcher.lane import Lane, astart_lane, start_lane

pytestmark = pytest.mark.real

HOST_SCRIPT = Path(__file__).parents[1] / "support" / "lane_host.py"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _llama_servers(lane_pid: int) -> list[int]:
    found = []
    for pid in descendants(lane_pid):
        try:
            if "llama-server" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace"):
                found.append(pid)
        except OSError:
            pass
    return found


def test_a_lane_started_from_the_main_thread_streams_and_stops(
        tmp_path: Path, llama_server_binary: Path, model_path: Path) -> None:
    with start_lane(tmp_path / "data", allowed_origins=[ORIGIN], llama_server=llama_server_binary,
                    model=model_path) as lane:
        assert lane.started
        children = descendants(lane.pid)
        assert len(_llama_servers(lane.pid)) == 1
        seen = stream_once(lane)
        assert seen["done"] and seen["events"] > 2
        assert seen["allow_origin"] == ORIGIN
        assert seen["url"] == lane.url
    assert _gone(lane.pid)
    assert all(_gone(pid) for pid in children)
    assert not (tmp_path / "data" / "lane.json").exists()


def test_a_lane_started_by_a_worker_thread_outlives_the_thread(
        tmp_path: Path, llama_server_binary: Path, model_path: Path) -> None:
    lanes: list[Lane] = []
    thread = threading.Thread(target=lambda: lanes.append(start_lane(
        tmp_path / "data", allowed_origins=[ORIGIN], llama_server=llama_server_binary, model=model_path)))
    thread.start()
    thread.join()
    (lane,) = lanes
    try:
        assert stream_once(lane)["done"]
        assert len(_llama_servers(lane.pid)) == 1  # not respawned: nothing died with the thread
        assert stream_once(lane)["done"]
    finally:
        lane.stop()
    assert _gone(lane.pid)


def test_the_async_variant_streams(tmp_path: Path, llama_server_binary: Path, model_path: Path) -> None:
    async def run() -> tuple[int, dict]:
        async with await astart_lane(tmp_path / "data", allowed_origins=[ORIGIN], llama_server=llama_server_binary,
                                     model=model_path) as lane:
            return lane.pid, await asyncio.to_thread(stream_once, lane)

    pid, seen = asyncio.run(run())
    assert seen["done"]
    assert _gone(pid)


def _worker(data_dir: Path, binary: Path, model: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HOST_SCRIPT), str(data_dir), str(binary), str(model)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(HOST_SCRIPT.parent)},
    )


def test_two_workers_share_one_lane_and_it_stops_after_the_last(
        tmp_path: Path, llama_server_binary: Path, model_path: Path) -> None:
    data_dir = tmp_path / "data"
    workers = [_worker(data_dir, llama_server_binary, model_path) for _ in range(2)]
    try:
        reports = [json.loads(worker.stdout.readline()) for worker in workers]  # type: ignore[union-attr]
        assert {report["lane_pid"] for report in reports} == {reports[0]["lane_pid"]}
        assert sorted(report["started"] for report in reports) == [False, True]
        assert all(report["done"] for report in reports)
        lane_pid = reports[0]["lane_pid"]
        assert len(_llama_servers(lane_pid)) == 1
        first = next(i for i, report in enumerate(reports) if report["started"])
        workers[first].communicate("", timeout=60)  # the worker that started the lane leaves
        assert not _gone(lane_pid)
        joined = start_lane(data_dir)  # a third worker still finds it, and it still streams
        assert joined.pid == lane_pid and not joined.started
        assert stream_once(joined)["done"]
        joined.stop()
        assert not _gone(lane_pid)
        workers[1 - first].communicate("", timeout=60)
        for _ in range(300):
            if _gone(lane_pid):
                break
            threading.Event().wait(0.1)
        assert _gone(lane_pid)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_a_logout_in_the_host_reaches_the_lanes_gate(tmp_path: Path, llama_server_binary: Path,
                                                     model_path: Path) -> None:
    """The gate polls the lane's broker half; the host's revocation is handed to it, so a token the host
    minted before its user logged out is refused on the lane, and one minted after works."""
    with start_lane(tmp_path / "data", allowed_origins=[ORIGIN], llama_server=llama_server_binary,
                    model=model_path) as lane:
        core = mounted_core(lane.broker_settings)
        before = negotiate(core, lane, count=12)
        core.revoke("alice")
        outcomes = []
        for grant in before:  # the gate refuses within a second (DESIGN), six here; each try spends one grant
            outcomes.append(stream(grant))
            if outcomes[-1]["status"] != 200:
                break
            threading.Event().wait(0.5)
        assert outcomes[-1] == {"status": 401, "reason": "token_revoked"}, outcomes
        assert stream(negotiate(core, lane)[0])["done"]
