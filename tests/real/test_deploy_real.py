"""Deployment as users run it: one forwarded port, two-port mode, a path-prefixing proxy, TLS, attach."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from forwarder import Forwarder
from prefix_proxy import PrefixProxy
from stack import run_stack

from llama_launcher.bench.processes import alive, descendants
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = pytest.mark.real
CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "stream": True, "max_tokens": 12}


def _stream(url: str, token: str, *, origin: str | None = None, verify: ssl.SSLContext | bool = True) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    if origin:
        headers["Origin"] = origin
    with httpx.stream("POST", url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=60,
                      verify=verify) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sum(1 for line in response.iter_lines() if line.startswith("data: {"))


def test_one_forwarded_port_serves_page_negotiation_and_lane(llama_server_binary: Path) -> None:
    with run_stack("--llama-server", str(llama_server_binary)) as stack, Forwarder(("127.0.0.1", stack.port)) as tunnel:
        base = f"http://127.0.0.1:{tunnel.port}"
        login = httpx.get(f"{base}/?token={stack.access_token}", follow_redirects=False, timeout=10)
        assert login.status_code == 303
        grant = httpx.post(f"{base}/direct-stream", headers={"Authorization": f"Bearer {stack.access_token}",
                                                             "Origin": base}, timeout=10).json()
        assert grant["url"] == f"{base}/direct"
        assert _stream(grant["url"], grant["token"], origin=base) >= 2


def test_login_drops_the_token_and_sets_safe_headers(llama_server_binary: Path) -> None:
    with run_stack("--llama-server", str(llama_server_binary)) as stack:
        response = httpx.get(stack.login_url, follow_redirects=False, timeout=10)
        assert response.status_code == 303
        assert response.headers["location"] == "./"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "no-store" in response.headers["cache-control"]
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = httpx.get(stack.base + "/", cookies=response.cookies, timeout=10)
        assert page.status_code == 200 and page.headers["referrer-policy"] == "no-referrer"
        negotiation = httpx.post(stack.base + "/direct-stream", cookies=response.cookies,
                                 headers={"Origin": stack.base}, timeout=10)
        assert negotiation.headers["cache-control"] == "no-store"


def test_two_port_mode_grants_preflight_to_the_app_only(llama_server_binary: Path) -> None:
    with run_stack("--llama-server", str(llama_server_binary), "--gate-port", "0") as stack:
        app = stack.base
        grant = stack.negotiate(origin=app)
        assert grant["url"].rsplit(":", 1)[0] == app.rsplit(":", 1)[0] and grant["url"] != app + "/direct"
        lane = grant["url"] + "/v1/chat/completions"
        ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
        allowed = httpx.options(lane, headers={"Origin": app, **ask}, timeout=10)
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == app
        foreign = httpx.options(lane, headers={"Origin": "http://evil.example", **ask}, timeout=10)
        assert foreign.status_code == 403
        assert "access-control-allow-origin" not in foreign.headers
        assert _stream(grant["url"], grant["token"], origin=app) >= 2
        assert httpx.get(grant["url"].removesuffix("/direct") + "/", timeout=10).status_code == 404


def test_openai_sdk_behind_a_path_prefixing_proxy(llama_server_binary: Path) -> None:
    with PrefixProxy("/llm") as proxy:
        public = f"http://127.0.0.1:{proxy.port}/llm"
        with run_stack("--llama-server", str(llama_server_binary), "--public-url", public) as stack:
            proxy.target_port = stack.port
            answer = httpx.post(f"{public}/direct-stream", headers={"Authorization": f"Bearer {stack.access_token}"},
                                timeout=10)
            grant = answer.json()
            assert grant["url"] == f"{public}/direct"
            assert grant["fallback_url"] == "/llm/v1/chat/completions"
            client = openai.OpenAI(base_url=grant["url"] + "/v1", api_key=grant["token"], max_retries=0)
            stream = client.chat.completions.create(model=grant["model"], messages=CHAT["messages"], stream=True,
                                                    max_tokens=12)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()


def test_tls_self_signed(llama_server_binary: Path) -> None:
    with run_stack("--llama-server", str(llama_server_binary), "--tls-self-signed") as stack:
        assert stack.base.startswith("https://")
        trust = ssl.create_default_context(cafile=str(stack.data_dir / "keys" / "tls-cert.pem"))
        answer = httpx.post(f"{stack.base}/direct-stream", headers={"Authorization": f"Bearer {stack.access_token}"},
                            timeout=10, verify=trust)
        grant = answer.json()
        assert grant["url"].startswith("https://")
        assert _stream(grant["url"], grant["token"], verify=trust) >= 2
        with pytest.raises(httpx.ConnectError):
            httpx.get(stack.base + "/.well-known/jwks.json", timeout=10)


@pytest.fixture
def own_llama_server(llama_server_binary: Path, model_path: Path):
    server = LlamaServer(ServerOptions(binary=llama_server_binary, model=model_path, alias="smollm2"),
                         make_runtime_dir())
    server.start()
    server.wait_ready(timeout=120, show_progress=False)
    yield server
    server.stop()


def test_attach_streams_and_upstream_loss_turns_negotiation_off(own_llama_server: LlamaServer) -> None:
    assert isinstance(own_llama_server.address, str)
    key = own_llama_server.authorization().removeprefix(b"Bearer ").decode()
    with Forwarder(own_llama_server.address) as upstream, run_stack(
        "--upstream", f"http://127.0.0.1:{upstream.port}",  # no --model-alias: learned from /v1/models
        env={"LLAMA_DIRECT_UPSTREAM_KEY": key},
    ) as stack:
        grant = stack.negotiate()
        assert grant["supported"] is True and grant["model"] == "smollm2"
        assert _stream(grant["url"], grant["token"]) >= 2
        chats = upstream.requests(lambda line: line.startswith(b"POST"))
        assert chats == [b"POST /v1/chat/completions HTTP/1.1"]
        own_llama_server.stop()
        stopped = time.monotonic()
        while time.monotonic() - stopped < 2.0:
            answer = stack.negotiate()
            if answer["supported"] is False:
                break
            time.sleep(0.1)
        assert answer["supported"] is False and answer["reason"] in ("gate_down", "model_loading")
        assert time.monotonic() - stopped < 2.0


def test_doctor_names_a_wrong_upstream_key(own_llama_server: LlamaServer) -> None:
    with Forwarder(own_llama_server.address) as upstream:  # type: ignore[arg-type]
        done = subprocess.run(
            [sys.executable, "-m", "llama_launcher.cli", "doctor", "--upstream", f"http://127.0.0.1:{upstream.port}"],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "LLAMA_DIRECT_UPSTREAM_KEY": "wrong-key-1234"},
        )
    assert done.returncode == 1
    assert "the upstream refused the key (401)" in done.stdout
    assert "wrong-key-1234" not in done.stdout + done.stderr


def test_sigterm_leaves_no_process(llama_server_binary: Path) -> None:
    with run_stack("--llama-server", str(llama_server_binary)) as stack:
        family = descendants(stack.process.pid)
        assert len(family) >= 3  # broker, gate, llama-server
        stack.process.send_signal(signal.SIGTERM)
        assert stack.process.wait(30) == 0
    time.sleep(0.5)
    assert [pid for pid in family if alive(pid)] == []
