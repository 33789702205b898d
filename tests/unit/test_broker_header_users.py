"""The broker behind the gate with `--trusted-user-header`: the user the gate forwards is named by
`/v1/me`, granted as their own `sub`, and held to the origin check; a broker that was not told to take
header users never reads the header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.settings import BrokerSettings
from llama_direct.header_users import FORWARDED_USER_HEADER, HeaderUsers
from llama_direct.lanes import WHOAMI_PATH
from llama_direct.users import Limits

ACCESS_TOKEN = "test-access-token-0123456789"
HEALTH: dict[str, Any] = {"gate": "ok", "model_ready": True, "model": "smol", "vision": False,
                          "slots": {"total": None, "busy": None}, "router": False,
                          "models": [{"id": "smol", "status": "loaded", "vision": False}]}


def _client(tmp_path: Path, config: HeaderUsers | None) -> TestClient:
    settings = BrokerSettings(data_dir=tmp_path / "data", broker_socket=tmp_path / "b.sock",
                              control_socket=tmp_path / "c.sock", gate_socket=tmp_path / "g.sock", model="smol",
                              header_users=config)
    gate = httpx.MockTransport(lambda request: httpx.Response(200, json=HEALTH) if request.url.path == "/health"
                               else httpx.Response(404))
    return TestClient(create_app(settings, ACCESS_TOKEN, gate_transport=gate), base_url="http://box:8000")


def test_the_broker_names_a_header_user_and_grants_their_own_sub(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSLOTH_DIRECT_STREAM", raising=False)
    with _client(tmp_path, HeaderUsers(Limits(max_tokens=16))) as client:
        who = client.get(WHOAMI_PATH, headers={FORWARDED_USER_HEADER: "Ann"}).json()
        assert who["name"] == "ann" and who["owner"] is False and who["sub"].startswith("u-")
        answer = client.post("/direct-stream", json={},
                             headers={FORWARDED_USER_HEADER: "ann", "Sec-Fetch-Site": "same-origin"})
        assert answer.status_code == 200, answer.text
        assert jwt.decode(answer.json()["token"], options={"verify_signature": False})["sub"] == who["sub"]
        refused = client.get(WHOAMI_PATH, headers={FORWARDED_USER_HEADER: "ann smith"})
        assert refused.status_code == 403 and refused.json()["error"]["reason"] == "bad_user_header"
        cross_site = client.post("/direct-stream", json={},
                                 headers={FORWARDED_USER_HEADER: "ann", "Origin": "https://evil.example"})
        assert cross_site.status_code == 403  # the proxy's login is ambient, like a cookie
        owner = client.get(WHOAMI_PATH, headers={FORWARDED_USER_HEADER: "ann",
                                                 "Authorization": f"Bearer {ACCESS_TOKEN}"})
        assert owner.json()["owner"] is True  # llama-direct's own credential, chosen by the caller, first


def test_a_broker_without_header_users_ignores_the_header(tmp_path: Path) -> None:
    with _client(tmp_path, None) as client:
        answer = client.get(WHOAMI_PATH, headers={FORWARDED_USER_HEADER: "ann"})
        assert answer.status_code == 401
