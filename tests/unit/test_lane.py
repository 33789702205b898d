"""The launcher API's pure parts: the lane's flags, its ready message, its leases; and the mounted core."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from broker.app import create_control_app
from broker.core import BrokerCore
from broker.mount import mounted_core
from broker.settings import BrokerSettings
from broker.signing_keys import KeyRing
from llama_direct.control import parse_revocation, revocation
from llama_direct.runtime import SESSIONS_FILE
from llama_launcher.errors import LauncherError
from llama_launcher.lane import LaneOptions, parse_ready
from llama_launcher.lane_leases import GREETING, HELD, LAST, RELEASE, Leases, bind_lease_socket


def test_the_lane_runs_serve_with_the_lane_port_only_and_no_key_rotation(tmp_path: Path) -> None:
    options = LaneOptions(data_dir=tmp_path, allowed_origins=("https://app.example",), port=9100,
                          model=Path("/m.gguf"), ctx=4096, upstream_key="secret-key-value",
                          serve_flags=("--token-ttl", "60"), server_args=("--threads", "2"))
    argv = options.argv()
    assert argv[:8] == ["--data-dir", str(tmp_path), "--host", "127.0.0.1", "--gate-port", "9100",
                        "--key-rotation-hours", "0"]
    assert argv[8:10] == ["--allow-origin", "https://app.example"]
    assert argv[argv.index("--model") + 1] == "/m.gguf" and argv[argv.index("--ctx") + 1] == "4096"
    assert argv[-5:] == ["--token-ttl", "60", "--", "--threads", "2"]
    assert "--port" not in argv and "--llama-server" not in argv
    assert "secret-key-value" not in " ".join(argv) and "secret-key-value" not in repr(options)


def test_the_ready_message_is_the_document_or_the_cause() -> None:
    document = {"url": "http://127.0.0.1:1/direct", "pid": 5, "lease_socket": "/x", "broker_settings": {}}
    assert parse_ready(b'{"url": "http://127.0.0.1:1/direct", "pid": 5, "lease_socket": "/x", '
                       b'"broker_settings": {}}', None) == document
    with pytest.raises(LauncherError, match="llama-server crashed"):
        parse_ready(b'{"error": "llama-server crashed"}', 1)
    with pytest.raises(LauncherError, match="stopped before it was ready \\(exit code 2\\)"):
        parse_ready(b"", 2)
    with pytest.raises(LauncherError, match="lacks broker_settings"):
        parse_ready(b'{"url": "u", "pid": 1, "lease_socket": "/x"}', None)


def _lease(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(str(path))
        assert sock.recv(len(GREETING)) == GREETING
    except BaseException:
        sock.close()
        raise
    return sock


def test_the_lane_stops_after_its_last_lease_however_each_ends(tmp_path: Path) -> None:
    empty = threading.Event()
    first, theirs = socket.socketpair()
    path = tmp_path / "lane.sock"
    leases = Leases(bind_lease_socket(path), theirs, empty.set)
    leases.start()
    second = _lease(path)
    third = _lease(path)
    first.close()  # its process died: the kernel closed it
    second.sendall(RELEASE)
    assert second.recv(16) == HELD
    assert not empty.is_set()
    third.sendall(RELEASE)
    assert third.recv(16) == LAST
    second.close()
    third.close()
    assert empty.wait(10)
    with pytest.raises(OSError):
        _lease(path)  # a lane that is stopping greets no one
    leases.close()


def test_closing_the_leases_ends_every_holders_lease(tmp_path: Path) -> None:
    first, theirs = socket.socketpair()
    leases = Leases(bind_lease_socket(tmp_path / "lane.sock"), theirs, lambda: None)
    leases.start()
    deadline = time.monotonic() + 10
    while leases.count != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    leases.close()
    first.settimeout(10)
    assert first.recv(16) == b""
    first.close()


def test_a_mounted_core_signs_with_the_lanes_keys_and_has_no_login_of_its_own(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    ring.load_or_create(time.time())  # what the lane's broker half made
    settings = {"data_dir": str(tmp_path), "broker_socket": "/b", "control_socket": "/c", "gate_socket": "/g",
                "model": "m", "key_rotation_hours": 24}
    core = mounted_core(settings)
    assert core.keyring.current.kid == ring.current.kid
    assert core.settings.key_rotation_hours == 0
    assert core.access.user_for("anything") is None and core.access.user_for("") is None
    core.sessions.create("alice")
    assert not (tmp_path / SESSIONS_FILE).exists()


def _lane_control(tmp_path: Path) -> tuple[dict[str, str], BrokerCore, uvicorn.Server]:
    """The lane's own broker half as its control app on its control socket, and the settings a host mounts."""
    lane_settings = {"data_dir": str(tmp_path), "broker_socket": str(tmp_path / "b.sock"),
                     "control_socket": str(tmp_path / "c.sock"), "gate_socket": str(tmp_path / "g.sock"),
                     "model": "m"}
    lane_core = BrokerCore(BrokerSettings.from_dict(lane_settings), "lane-access-token-0123456789")
    server = uvicorn.Server(uvicorn.Config(create_control_app(lane_core), uds=lane_settings["control_socket"],
                                           log_config=None, lifespan="off"))
    return lane_settings, lane_core, server


def test_a_mounted_cores_revocation_reaches_the_lanes_broker_on_its_control_socket(tmp_path: Path) -> None:
    """The gate polls the lane's broker half: a host's logout must reach it, not stay in the host."""
    lane_settings, lane_core, server = _lane_control(tmp_path)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        host = mounted_core(lane_settings)
        not_before = host.revoke("alice")
        assert lane_core.revocations.to_dict()["not_before"]["alice"] == not_before
        assert host.revocations.to_dict()["not_before"]["alice"] == not_before
        assert "alice" in (tmp_path / "revocations.json").read_text()  # the lane's broker keeps it
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_revocation_awaited_on_the_hosts_loop_leaves_the_loop_free(tmp_path: Path) -> None:
    """`arevoke` is what an async route awaits. Here the lane's broker is served on the same loop: it can
    answer only while the loop is free, so a revocation that blocked the loop would not be forwarded."""
    lane_settings, lane_core, server = _lane_control(tmp_path)
    host = mounted_core(lane_settings)

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            not_before = await host.arevoke("bob")
            # before the server stops: it would still answer a request it accepted while the loop was blocked
            assert lane_core.revocations.to_dict()["not_before"].get("bob") == not_before
            assert host.revocations.to_dict()["not_before"]["bob"] == not_before
        finally:
            server.should_exit = True
            await serving

    asyncio.run(main())


def test_a_revocation_the_lane_cannot_take_is_logged_not_raised(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    settings = {"data_dir": str(tmp_path), "broker_socket": "/b", "control_socket": str(tmp_path / "none.sock"),
                "gate_socket": "/g", "model": "m"}
    host = mounted_core(settings)
    host.revoke("alice")
    asyncio.run(host.arevoke("bob"))
    assert "event=revocation_not_forwarded user=alice" in caplog.text
    assert "event=revocation_not_forwarded user=bob" in caplog.text
    assert {"alice", "bob"} <= host.revocations.to_dict()["not_before"].keys()


def test_the_revocation_document_is_checked() -> None:
    assert parse_revocation(revocation("alice", 12)) == ("alice", 12)
    for bad in ({"user": "alice"}, {"user": "", "not_before": 1}, {"user": "a", "not_before": True},
                {"user": "a", "not_before": 1.5}, {"user": "a", "not_before": 1, "x": 1}, ["alice", 1]):
        assert parse_revocation(bad) is None
