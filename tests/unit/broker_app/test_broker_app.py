"""The broker app: login, its static page, its error bodies, its ids and keys, its settings, and the
server that runs it (negotiation in test_broker_negotiation.py, the baseline in test_broker_baseline.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from broker_harness import (
    ACCESS_TOKEN,
    BEARER,
    HOST,
    Harness,
    HarnessFactory,
    _error,
    _settings,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import broker.static as broker_static
from broker.core import BrokerCore
from broker.gate_health import GateHealth
from broker.server import GRACEFUL_SHUTDOWN_SECONDS
from broker.sessions import COOKIE_NAME
from broker.settings import (
    ACCESS_TOKEN_ENV,
    CONFIG_ENV,
    BrokerSettings,
    SettingsError,
    access_token_from_env,
    direct_stream_enabled,
)
from broker.signing_keys import KeyRing
from broker.static import static_file
from llama_direct.control import STATE_PATH
from llama_direct.ids import load_or_create_ids
from llama_direct.runtime import LOG_LEVEL_ENV


class TestLogin:
    def test_a_valid_token_sets_the_session_and_leaves_the_address_bar(self, h: Harness) -> None:
        answer = h.client.get("/?token=" + ACCESS_TOKEN, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "./"
        assert ACCESS_TOKEN not in answer.headers["location"]
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
        name, _, rest = answer.headers["set-cookie"].partition("=")
        session_id, *flags = rest.split("; ")
        assert name == COOKIE_NAME
        assert flags == ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=2592000"]  # 30 days, kept across restarts
        assert h.core.sessions.user_for(session_id) == "local"
        assert ACCESS_TOKEN not in answer.headers["set-cookie"]

    def test_the_cookie_is_secure_when_the_browser_used_https(self, h: Harness) -> None:
        answer = h.client.get(
            "/?token=" + ACCESS_TOKEN, headers={"X-Forwarded-Proto": "https"}, follow_redirects=False
        )
        assert answer.headers["set-cookie"].endswith("; HttpOnly; SameSite=Strict; Path=/; Max-Age=2592000; Secure")

    def test_a_wrong_token_is_401_json(self, h: Harness) -> None:
        answer = h.client.get("/?token=wrong", follow_redirects=False)
        assert answer.status_code == 401
        assert answer.json() == _error("The access token is not valid.", 401, "authentication_error")
        assert "set-cookie" not in answer.headers
        assert answer.headers["cache-control"] == "no-store"

    def test_a_wrong_token_in_a_browser_is_a_401_page(self, h: Harness) -> None:
        answer = h.client.get("/?token=wrong", headers={"Accept": "text/html"})
        assert answer.status_code == 401
        assert answer.headers["content-type"].startswith("text/html")
        assert "not valid" in answer.text

    def test_after_login_the_page_is_served(self, h: Harness) -> None:
        h.login()
        answer = h.client.get("/")
        assert answer.status_code == 200
        assert answer.text == "<!doctype html><title>chat</title>"
        assert answer.headers["referrer-policy"] == "no-referrer"

    def test_without_a_session_the_page_asks_for_login(self, h: Harness) -> None:
        answer = h.client.get("/", headers={"Accept": "text/html"})
        assert answer.status_code == 401
        assert "Log in first" in answer.text

    def test_a_missing_build_says_how_to_build(self, h: Harness, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
        monkeypatch.setattr(broker_static, "_static_root", lambda: tmp_path / "nothing")
        h.login()
        answer = h.client.get("/")
        assert answer.status_code == 200
        assert "npm run build" in answer.text

    def test_the_token_is_never_logged(self, h: Harness, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level("DEBUG"):
            h.login()
            h.client.get("/?token=wrong-" + ACCESS_TOKEN)
        # The test client logs the URLs it requests itself; what matters is what the broker writes.
        records = [r.getMessage() for r in caplog.records if r.name.startswith(("broker", "uvicorn"))]
        assert any("path=/ status=303" in record for record in records)
        assert all(ACCESS_TOKEN not in record and "token=" not in record for record in records)


class TestStatic:
    def test_assets_need_no_login(self, h: Harness) -> None:
        answer = h.client.get("/app.js")
        assert (answer.status_code, answer.text) == (200, "console.log('page')")
        assert answer.headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert h.client.get("/assets/app.css").headers["content-type"].startswith("text/css")

    @pytest.mark.parametrize("path", ["/index.html", "/missing.js", "/assets", "/.hidden", "/assets/%2e%2e/app.js"])
    def test_no_way_around_the_login_or_out_of_the_folder(self, h: Harness, path: str) -> None:
        answer = h.client.get(path)
        assert answer.status_code == 404
        assert answer.json() == _error("Not found.", 404, "not_found_error")

    def test_segments_are_plain(self) -> None:
        assert static_file("../app.py") is None
        assert static_file("assets//app.css") is None


class TestErrors:
    def test_an_unknown_route_is_json(self, h: Harness) -> None:
        answer = h.client.post("/nowhere", headers=BEARER)
        assert answer.status_code == 405
        assert answer.json() == _error("Method not allowed.", 405, "invalid_request_error")

    def test_anything_unforeseen_is_a_generic_500(self, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        def broken(now: float) -> dict[str, Any]:
            raise RuntimeError("/tmp/ld-x/keys/secret.pem unreadable")

        monkeypatch.setattr(h.core.keyring, "jwks", broken)
        answer = h.client.get("/.well-known/jwks.json")
        assert answer.status_code == 500
        assert answer.json() == _error("Internal error.", 500, "server_error")
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "secret" not in answer.text

    def test_the_echo_tool(self, h: Harness) -> None:
        assert h.client.post("/tools/echo", headers=BEARER, json={"text": "ping"}).json() == {"result": "ping"}
        bad = h.client.post("/tools/echo", headers=BEARER, json={"text": 5})
        assert bad.status_code == 400
        assert bad.json() == _error('The echo tool takes {"text": "..."}.', 400, "invalid_request_error")

    def test_a_body_too_large(self, h: Harness) -> None:
        answer = h.client.post("/tools/echo", headers=BEARER, content=b"x" * (64 * 1024 + 1))
        assert answer.status_code == 413
        assert answer.json() == _error("The request body is too large.", 413, "invalid_request_error")


def test_ids_are_made_once_and_kept(tmp_path: Path) -> None:
    first = load_or_create_ids(tmp_path / "data")
    assert load_or_create_ids(tmp_path / "data") == first
    assert first.broker_id != first.gate_id
    assert (tmp_path / "data" / "ids.json").stat().st_mode & 0o777 == 0o600


def test_a_token_is_never_minted_before_the_gates_start_cut_off(tmp_path: Path) -> None:
    """The gate refuses an `iat` before the second after it started; minted in that second, a token
    takes the cut-off as its `iat` (the gate's leeway lets it start at once) instead of a 401."""
    core = BrokerCore(_settings(tmp_path), ACCESS_TOKEN)
    assert core.mint_time("user", 1000.4) == 1000.4
    core.gate.health = GateHealth(up=True, model_ready=True, not_issued_before=1001)
    assert core.mint_time("user", 1000.4) == 1001
    assert core.mint_time("user", 1002.7) == 1002.7


def test_a_given_keyring_is_used(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys", "ES256")
    ring.load_or_create(0.0)
    core = BrokerCore(_settings(tmp_path), ACCESS_TOKEN, keyring=ring)
    assert core.keyring.current.kid == ring.current.kid


def test_a_key_in_the_keys_dir_that_others_can_read_stops_the_broker_in_one_line(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "data" / "keys", "EdDSA")
    ring.load_or_create(0.0)
    (tmp_path / "data" / "keys" / f"{ring.current.kid}.pem").chmod(0o640)
    with pytest.raises(SettingsError, match=r"^keys dir: .*chmod 600") as caught:
        BrokerCore(_settings(tmp_path), ACCESS_TOKEN)
    assert "\n" not in str(caught.value) and str(tmp_path) not in str(caught.value)


class TestScheduledRotation:
    def test_a_successor_is_published_before_it_signs_and_the_old_key_stays_published(
        self, make: HarnessFactory
    ) -> None:
        h = make(key_rotation_hours=1)

        def kid_of_a_new_token() -> str:
            token = h.client.post("/direct-stream", headers=BEARER).json()["token"]
            return str(jwt.get_unverified_header(token)["kid"])

        def published() -> list[str]:
            return [k["kid"] for k in h.client.get("/.well-known/jwks.json").json()["keys"]]

        first = kid_of_a_new_token()
        h.clock.now += 3600
        assert kid_of_a_new_token() == first  # this mint staged the successor; it does not sign yet
        staged = [kid for kid in published() if kid != first]
        assert len(staged) == 1
        h.clock.now += 2
        assert kid_of_a_new_token() == staged[0]
        assert published() == [staged[0], first]

    def test_zero_hours_never_rotates(self, make: HarnessFactory) -> None:
        h = make(key_rotation_hours=0)
        first = h.client.post("/direct-stream", headers=BEARER).json()["token"]
        h.clock.now += 10 * 365 * 86400 / 100
        later = h.client.post("/direct-stream", headers=BEARER).json()["token"]
        assert jwt.get_unverified_header(later)["kid"] == jwt.get_unverified_header(first)["kid"]
        assert len(h.client.get("/.well-known/jwks.json").json()["keys"]) == 1


class TestConfiguredSigningKey:
    """`--signing-key-file`: one key the operator manages, e.g. shared with a gateway such as HAProxy."""

    def _write_key(self, path: Path, mode: int = 0o600) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path.write_bytes(pem)
        path.chmod(mode)
        return pem.decode("ascii")

    def test_tokens_are_signed_with_the_configured_key_and_its_algorithm(
        self, make: HarnessFactory, tmp_path: Path
    ) -> None:
        key_file = tmp_path / "signing.pem"
        self._write_key(key_file)
        h = make(signing_key_file=key_file)
        token = h.client.post("/direct-stream", headers=BEARER).json()["token"]
        assert jwt.get_unverified_header(token)["alg"] == "ES256"
        keyset = jwt.PyJWKSet.from_dict(h.client.get("/.well-known/jwks.json").json())
        assert [k.key_id for k in keyset.keys] == [h.core.keyring.current.kid]
        assert not (tmp_path / "data" / "keys").exists()

    @pytest.mark.parametrize(
        ("prepare", "reason"),
        [
            ("missing", "signing_key_file does not exist"),
            ("world-readable", "signing_key_file: the signing key file must be readable by its owner only (chmod 600)"),
            ("not-a-key", "signing_key_file: the signing key file is not an unencrypted Ed25519 or P-256 PEM key"),
        ],
    )
    def test_an_unusable_key_file_is_a_settings_error_that_quotes_nothing(
        self, tmp_path: Path, prepare: str, reason: str
    ) -> None:
        key_file = tmp_path / "signing.pem"
        if prepare == "world-readable":
            pem = self._write_key(key_file, 0o644)
        elif prepare == "not-a-key":
            pem = "not a key at all"
            key_file.write_text(pem)
            key_file.chmod(0o600)
        else:
            pem = ""
        with pytest.raises(SettingsError) as refused:
            BrokerCore(_settings(tmp_path, signing_key_file=key_file), ACCESS_TOKEN)
        assert str(refused.value) == reason
        assert str(tmp_path) not in str(refused.value)
        assert not pem or pem not in str(refused.value)


class TestSettings:
    def _raw(self, tmp_path: Path) -> dict[str, Any]:
        return {
            "data_dir": str(tmp_path / "data"),
            "broker_socket": str(tmp_path / "broker.sock"),
            "control_socket": str(tmp_path / "control.sock"),
            "gate_socket": str(tmp_path / "gate.sock"),
            "model": "smol",
        }

    def test_from_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        raw = {**self._raw(tmp_path), "allowed_origins": ["https://studio.example"], "gate_port": 9443,
               "algorithm": "ES256"}
        (tmp_path / "broker.json").write_text(json.dumps(raw))
        monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "broker.json"))
        settings = BrokerSettings.from_env()
        assert settings == BrokerSettings(
            data_dir=tmp_path / "data", broker_socket=tmp_path / "broker.sock",
            control_socket=tmp_path / "control.sock", gate_socket=tmp_path / "gate.sock", model="smol",
            allowed_origins=("https://studio.example",), gate_port=9443, algorithm="ES256",
        )
        assert (settings.token_ttl, settings.max_tokens_cap) == (30, 2048)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"algorithm": "HS256"}, "algorithm must be one of EdDSA, ES256"),
            ({"token_ttl": 301}, "token_ttl must be between 1 and 300 seconds"),
            ({"gate_port": "9443"}, "broker.json: gate_port must be an integer or null"),
            ({"public_url": "ftp://x"}, "public_url must be an http(s) URL without query or fragment"),
            ({"allowed_origins": ["https://a.example/path"]},
             "allowed_origins must be origins like https://app.example:8443"),
            ({"access_token": "x" * 20}, "broker.json has unknown fields: access_token"),
            ({"model": ""}, "model must be a non-empty alias"),
            ({"key_rotation_hours": -1}, "key_rotation_hours must be between 0 (never) and 8760"),
            ({"key_rotation_hours": "24"}, "broker.json: key_rotation_hours must be a number"),
        ],
    )
    def test_bad_settings_name_the_field_not_the_value(self, tmp_path: Path, change: dict[str, Any],
                                                        message: str) -> None:
        with pytest.raises(SettingsError) as excinfo:
            BrokerSettings.from_dict({**self._raw(tmp_path), **change})
        assert str(excinfo.value) == message

    def test_a_missing_path(self, tmp_path: Path) -> None:
        raw = self._raw(tmp_path)
        del raw["gate_socket"]
        with pytest.raises(SettingsError) as excinfo:
            BrokerSettings.from_dict(raw)
        assert str(excinfo.value) == "broker.json lacks gate_socket"

    def test_an_unreadable_file_names_no_path(self, tmp_path: Path) -> None:
        with pytest.raises(SettingsError) as excinfo:
            BrokerSettings.from_file(tmp_path / "absent.json")
        assert str(excinfo.value) == "broker.json cannot be read"
        (tmp_path / "broken.json").write_text('{"model": ')
        with pytest.raises(SettingsError) as excinfo:
            BrokerSettings.from_file(tmp_path / "broken.json")
        assert str(excinfo.value) == "broker.json is not JSON"

    def test_the_access_token_comes_from_the_environment(self) -> None:
        assert access_token_from_env({ACCESS_TOKEN_ENV: ACCESS_TOKEN}) == ACCESS_TOKEN
        with pytest.raises(SettingsError, match="is not set"):
            access_token_from_env({})
        with pytest.raises(SettingsError, match="at least 8 characters"):
            access_token_from_env({ACCESS_TOKEN_ENV: "short"})

    @pytest.mark.parametrize(("value", "enabled"), [(None, True), ("1", True), ("0", False), ("false", False),
                                                    ("Off", False), (" off ", False), ("yes", True)])
    def test_the_toggle(self, value: str | None, enabled: bool) -> None:
        assert direct_stream_enabled({} if value is None else {"UNSLOTH_DIRECT_STREAM": value}) is enabled


def test_the_server_runs_both_apps_on_private_sockets_and_stops_cleanly(tmp_path: Path) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="ld-"))
    raw = {
        "data_dir": str(tmp_path / "data"),
        "broker_socket": str(runtime / "broker.sock"),
        "control_socket": str(runtime / "control.sock"),
        "gate_socket": str(runtime / "gate.sock"),
        "model": "smol",
    }
    (tmp_path / "broker.json").write_text(json.dumps(raw))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(runtime / "broker.sock"))
    stale.close()
    # DEBUG: a successful request is logged only there (the page's polls drowned the INFO log)
    env = {**os.environ, CONFIG_ENV: str(tmp_path / "broker.json"), ACCESS_TOKEN_ENV: ACCESS_TOKEN,
           LOG_LEVEL_ENV: "DEBUG"}
    process = subprocess.Popen([sys.executable, "-m", "broker"], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (runtime / "control.sock").exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        for name in ("broker.sock", "control.sock"):
            assert (runtime / name).stat().st_mode & 0o777 == 0o600
        public = httpx.Client(transport=httpx.HTTPTransport(uds=str(runtime / "broker.sock")), base_url="http://x")
        control = httpx.Client(transport=httpx.HTTPTransport(uds=str(runtime / "control.sock")), base_url="http://x")
        with public, control:
            deadline = time.monotonic() + 10
            while True:
                try:
                    login = public.get("/?token=" + ACCESS_TOKEN)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert login.status_code == 303
            answer = public.post("/direct-stream", headers={**BEARER, "Host": HOST}).json()
            assert (answer["supported"], answer["reason"]) == (False, "gate_down")
            assert control.get("/jwks").json()["keys"][0]["alg"] == "EdDSA"
            held: list[int] = []
            version = control.get(STATE_PATH).json()["version"]
            poll = threading.Thread(target=lambda: held.append(
                control.get(STATE_PATH, params={"known": version}, timeout=30).status_code))
            poll.start()  # the gate's long poll, held for 10 s unless something changes
            time.sleep(0.5)
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=15)
            stopped_in = time.monotonic() - stopping
            poll.join(5)
        assert process.returncode == 0
        log = stderr.decode()
        # the held poll answered at once: the stop ends in time, with no request cancelled and logged
        assert held == [304] and stopped_in < GRACEFUL_SHUTDOWN_SECONDS
        assert "Traceback" not in log and "Exception in ASGI application" not in log
        assert "event=request method=GET path=/ status=303" in log
        assert ACCESS_TOKEN not in log
        assert not (runtime / "broker.sock").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(runtime)
