"""Sessions and secrets, second round: the cookie behind a TLS proxy, failed logins, logout,
the redaction list's bound, revocations across a restart, and the data dir's files."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from health_answers import ready_health

from broker.app import create_app
from broker.core import BrokerCore
from broker.revocation_file import REVOCATIONS_FILE
from broker.sessions import COOKIE_NAME, LOGIN_FAILURE_BURST, RateLimiter
from broker.settings import BrokerSettings
from llama_direct import redaction
from llama_launcher.errors import LauncherError
from llama_launcher.supervisor import DataDirLock

TOKEN = "session-test-access-token-0123456789"
HOST = "box.lan:8000"
ORIGIN = "http://box.lan:8000"
NOW = 1_750_000_000.5


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _gate(request: httpx.Request) -> Any:
    if request.url.path == "/health":
        return httpx.Response(200, json=ready_health())
    return httpx.Response(404)


def _settings(tmp_path: Path, **overrides: Any) -> BrokerSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data", "broker_socket": tmp_path / "b.sock", "control_socket": tmp_path / "c.sock",
        "gate_socket": tmp_path / "g.sock", "model": "smol", "max_tokens_cap": 512, "rate_per_minute": 600,
        "burst": 50,
    }
    values.update(overrides)
    return BrokerSettings(**values)


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[list[TestClient]]:
    opened: list[TestClient] = []
    yield opened
    for client in opened:
        client.__exit__(None, None, None)


def _client(tmp_path: Path, opened: list[TestClient], clock: Clock | None = None, **overrides: Any) -> TestClient:
    app = create_app(_settings(tmp_path, **overrides), TOKEN, clock=clock or Clock(),
                     gate_transport=httpx.MockTransport(_gate))
    client = TestClient(app, base_url=f"http://{HOST}")
    client.__enter__()
    opened.append(client)
    return client


def _core(client: TestClient) -> BrokerCore:
    core = client.app.state.core  # type: ignore[attr-defined]
    assert isinstance(core, BrokerCore)
    return core


def _login(client: TestClient, **headers: str) -> Any:
    return client.get("/?token=" + TOKEN, headers=headers, follow_redirects=False)


class TestCookieBehindATlsProxy:
    def test_secure_and_scoped_to_the_public_path(self, tmp_path: Path, clients: list[TestClient]) -> None:
        client = _client(tmp_path, clients, public_url="https://chat.example/llm/")
        answer = _login(client, **{"X-Forwarded-Proto": "http"})  # the gate's own listener is plain
        flags = answer.headers["set-cookie"].split("; ")[1:]
        assert flags == ["HttpOnly", "SameSite=Strict", "Path=/llm", "Max-Age=2592000", "Secure"]
        # The proxy strips /llm, so the test client would not send a cookie scoped to it: log out by token.
        logout = client.post("/logout", headers={"Authorization": f"Bearer {TOKEN}"})
        assert logout.headers["set-cookie"].endswith("; Path=/llm; Max-Age=0; Secure")

    def test_a_plain_public_url_is_not_secure(self, tmp_path: Path, clients: list[TestClient]) -> None:
        client = _client(tmp_path, clients, public_url="http://chat.example/")
        flags = _login(client, **{"X-Forwarded-Proto": "https"}).headers["set-cookie"].split("; ")[1:]
        assert flags == ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=2592000"]

    def test_without_a_public_url_the_scheme_the_gate_saw_decides(
        self, tmp_path: Path, clients: list[TestClient]
    ) -> None:
        client = _client(tmp_path, clients)
        cookie = _login(client, **{"X-Forwarded-Proto": "https"}).headers["set-cookie"]
        assert cookie.endswith("; Path=/; Max-Age=2592000; Secure")


class TestFailedLogins:
    @pytest.mark.parametrize("kind", ["query", "bearer"])
    def test_limited_per_address_and_the_right_token_still_logs_in(
        self, tmp_path: Path, clients: list[TestClient], kind: str
    ) -> None:
        client = _client(tmp_path, clients)
        attacker = {"X-Forwarded-For": "203.0.113.7"}

        def wrong() -> Any:
            if kind == "query":
                return client.get("/?token=wrong-token", headers=attacker, follow_redirects=False)
            return client.post("/direct-stream", headers={**attacker, "Authorization": "Bearer wrong-token"})

        for _ in range(LOGIN_FAILURE_BURST):
            assert wrong().status_code == 401
        limited = wrong()
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        # Another address is not affected; the same address with the right token is not locked out.
        assert client.get("/?token=wrong-token", headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 401
        assert _login(client, **attacker).status_code == 303
        assert client.post("/direct-stream", headers={**attacker, "Authorization": f"Bearer {TOKEN}"}).status_code \
            == 200

    def test_the_allowance_refills(self, tmp_path: Path, clients: list[TestClient]) -> None:
        clock = Clock()
        client = _client(tmp_path, clients, clock=clock)
        for _ in range(LOGIN_FAILURE_BURST + 1):
            client.get("/?token=wrong-token")
        assert client.get("/?token=wrong-token").status_code == 429
        clock.now += 60
        assert client.get("/?token=wrong-token").status_code == 401

    def test_a_limiter_keeps_a_bounded_number_of_keys(self) -> None:
        limiter = RateLimiter(per_minute=1, burst=1, max_keys=3)
        assert limiter.acquire("a", 0) == 0
        assert limiter.acquire("a", 0) > 0
        for key in "bcd":
            limiter.acquire(key, 0)
        assert len(limiter._buckets) == 3  # "a", the least recently seen, is gone


class TestLogout:
    def test_the_old_cookie_no_longer_works(self, tmp_path: Path, clients: list[TestClient]) -> None:
        client = _client(tmp_path, clients)
        _login(client)
        old = client.cookies[COOKIE_NAME]
        assert client.post("/logout", headers={"Origin": ORIGIN}).status_code == 200
        replay = TestClient(client.app, base_url=f"http://{HOST}", cookies={COOKIE_NAME: old})
        assert replay.get("/v1/models").status_code == 401
        assert replay.post("/direct-stream", headers={"Origin": ORIGIN}).status_code == 401

    def test_a_bearer_logout_also_ends_the_cookie_it_carries(self, tmp_path: Path, clients: list[TestClient]) -> None:
        client = _client(tmp_path, clients)
        _login(client)
        old = client.cookies[COOKIE_NAME]
        client.post("/logout", headers={"Authorization": f"Bearer {TOKEN}"})
        assert _core(client).sessions.user_for(old) is None

    def test_the_ended_session_is_no_longer_kept_for_redaction(
        self, tmp_path: Path, clients: list[TestClient]
    ) -> None:
        client = _client(tmp_path, clients)
        _login(client)
        session_id = client.cookies[COOKIE_NAME]
        assert redaction.redact(session_id) == redaction.REDACTED
        client.post("/logout", headers={"Origin": ORIGIN})
        assert redaction.redact(session_id) == session_id


class TestRedactionBound:
    def test_session_ids_do_not_grow_the_list_forever(self) -> None:
        redaction.register_secret("a-lasting-secret-key-0001")
        before = redaction.registered_count()
        ids = [f"session-{n:06d}-xxxxxxxx" for n in range(redaction.MAX_EPHEMERAL_SECRETS + 500)]
        for session_id in ids:
            redaction.register_secret(session_id, ephemeral=True)
        assert redaction.registered_count() <= before + redaction.MAX_EPHEMERAL_SECRETS
        assert redaction.redact(ids[-1]) == redaction.REDACTED
        assert redaction.redact(ids[0]) == ids[0]
        assert redaction.redact("a-lasting-secret-key-0001") == redaction.REDACTED

    def test_forgetting_leaves_lasting_secrets(self) -> None:
        redaction.register_secret("another-lasting-key-0002")
        redaction.forget_secret("another-lasting-key-0002")
        assert redaction.redact("another-lasting-key-0002") == redaction.REDACTED


class TestRevocationsSurviveARestart:
    def test_a_restarted_broker_still_refuses_what_was_revoked(
        self, tmp_path: Path, clients: list[TestClient]
    ) -> None:
        clock = Clock()
        first = _client(tmp_path, clients, clock=clock)
        _login(first)
        first.post("/logout", headers={"Origin": ORIGIN})
        path = tmp_path / "data" / REVOCATIONS_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text()) == {"not_before": {"local": 1_750_000_001}}
        second = _client(tmp_path, clients, clock=clock)
        assert _core(second).revocations.to_dict() == {"not_before": {"local": 1_750_000_001}}
        assert not list(path.parent.glob(".*.tmp"))

    def test_expired_revocations_are_not_reloaded(self, tmp_path: Path, clients: list[TestClient]) -> None:
        clock = Clock()
        first = _client(tmp_path, clients, clock=clock)
        first.post("/direct-stream/revoke", headers={"Authorization": f"Bearer {TOKEN}"})
        clock.now += 2 * 24 * 3600
        assert _core(_client(tmp_path, clients, clock=clock)).revocations.to_dict() == {"not_before": {}}

    def test_a_damaged_file_starts_empty_with_a_warning(
        self, tmp_path: Path, clients: list[TestClient], caplog: pytest.LogCaptureFixture
    ) -> None:
        (tmp_path / "data").mkdir(mode=0o700)
        (tmp_path / "data" / REVOCATIONS_FILE).write_text("{not json")
        with caplog.at_level(logging.WARNING):
            core = _core(_client(tmp_path, clients))
        assert core.revocations.to_dict() == {"not_before": {}}
        assert "revocations_file_unreadable" in caplog.text


class TestDataDir:
    def test_a_group_writable_dir_is_refused(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        data.mkdir()
        data.chmod(0o770)
        with pytest.raises(LauncherError, match="writable by group or others") as raised:
            DataDirLock(data)
        assert "\n" not in str(raised.value)

    def test_a_world_writable_dir_is_refused(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        data.mkdir()
        data.chmod(0o707)
        with pytest.raises(LauncherError, match="writable by group or others"):
            DataDirLock(data)

    def test_a_dir_owned_by_another_user_is_refused(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        data = tmp_path / "data"
        data.mkdir(mode=0o700)
        monkeypatch.setattr(os, "getuid", lambda: os.stat(data).st_uid + 1)
        with pytest.raises(LauncherError, match="not owned by this user"):
            DataDirLock(data)

    def test_the_lock_file_is_not_followed_through_a_symlink(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        data.mkdir(mode=0o700)
        victim = tmp_path / "victim"
        victim.write_text("keep me")
        (data / ".lock").symlink_to(victim)
        with pytest.raises(LauncherError, match="symlink"):
            DataDirLock(data)
        assert victim.read_text() == "keep me"

    def test_a_private_dir_is_locked(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        lock = DataDirLock(data)
        with pytest.raises(LauncherError, match="another llama-direct serve"):
            DataDirLock(data)
        lock._handle.close()
        assert stat.S_IMODE((data / ".lock").stat().st_mode) == 0o600
