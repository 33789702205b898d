"""`serve --trusted-user-header` behind a proxy on loopback, end to end: this test is the proxy (an httpx
client from 127.0.0.1, named as `--trusted-proxy`), so a user it names streams through the lane with a
grant of their own `sub`; the same header from another local address (127.0.0.2) names nobody."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from stack import Stack, run_stack

pytestmark = pytest.mark.real

CHAT = {"messages": [{"role": "user", "content": "Say hi."}], "stream": True, "max_tokens": 8, "temperature": 0}
HEADER = "X-Remote-User"


def _listed(stack: Stack) -> dict[str, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "llama_launcher.cli", "users", "list", "--json", "--data-dir",
                           str(stack.data_dir)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    return {row["name"]: row for row in rows}


def _negotiate(client: httpx.Client, base: str, **headers: str) -> httpx.Response:
    return client.post(base + "/direct-stream", json={}, headers={"Sec-Fetch-Site": "same-origin", **headers})


def test_a_proxy_s_user_streams_as_themselves_and_anyone_else_s_header_names_nobody(
    llama_server_binary: Path, model_path: Path,
) -> None:
    with run_stack("--llama-server", str(llama_server_binary), "--trusted-proxy", "127.0.0.1",
                   "--trusted-user-header", HEADER, "--default-limits", "--max-tokens 8 --streams 2") as stack:
        assert "any local account" in stack.log_text()  # loopback, named: serve warns

        with httpx.Client(timeout=30) as proxy:  # from 127.0.0.1: the trusted proxy
            me = proxy.get(stack.base + "/v1/me", headers={HEADER: "Ann"})
            assert me.status_code == 200, me.text
            who = me.json()
            assert who["name"] == "ann" and who["owner"] is False and who["sub"].startswith("u-")
            answer = _negotiate(proxy, stack.base, **{HEADER: "ann"})
            assert answer.status_code == 200, answer.text
            grant = answer.json()
            claims = jwt.decode(grant["token"], options={"verify_signature": False})
            assert (claims["sub"], claims["grant"]["max_tokens"]) == (who["sub"], 8)  # the default limits
            headers = {"Authorization": f"Bearer {grant['token']}", HEADER: "ann"}
            if grant["grant"].get("origin"):
                headers["Origin"] = grant["grant"]["origin"]
            with proxy.stream("POST", grant["url"] + "/v1/chat/completions", json=CHAT, headers=headers,
                              timeout=120) as streamed:
                streamed.read()
            assert streamed.status_code == 200 and b"data: [DONE]" in streamed.content, streamed.content

        ann = _listed(stack)["ann"]
        assert (ann["id"], ann["max_tokens"], ann["streams"]) == (who["sub"], 8, 2)
        assert ann["login_fingerprint"] is None and ann["api_key_fingerprint"] is None  # the proxy is the login

        stranger = httpx.HTTPTransport(local_address="127.0.0.2")  # a local peer that is not the proxy
        with httpx.Client(transport=stranger, timeout=30) as client:
            refused = client.get(stack.base + "/v1/me", headers={HEADER: "ann"})
            assert refused.status_code == 401 and refused.json()["error"]["reason"] == "login_required"
            assert _negotiate(client, stack.base, **{HEADER: "bob"}).status_code == 401
            forged = client.get(stack.base + "/v1/me", headers={"X-Llama-Direct-User": "ann"})
            assert forged.status_code == 401
        assert "bob" not in _listed(stack)
