"""One gate in front of two real llama-servers (the SmolLM2 file): routing, failover and a model only one serves.

`single` serves `smollm2`; `router` serves `smollm2` and `solo` (two presets of the same file). Each
has its own key, handed to `serve` by two `--upstream-key-file`s paired with the `--upstream`s by
position. A counting forwarder in front of each tells the test where every request went.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from forwarder import Forwarder
from stack import Stack, run_stack

from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import RouterSource, ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = pytest.mark.real

CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "stream": True, "max_tokens": 4}


@dataclass
class Two:
    stack: Stack
    servers: list[LlamaServer]
    forwarders: list[Forwarder]

    def chats(self) -> list[int]:
        return [len(f.requests(lambda line: line.startswith(b"POST /v1/chat"))) for f in self.forwarders]


@pytest.fixture(scope="module")
def two(llama_server_binary: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    work = tmp_path_factory.mktemp("two")
    preset = work / "models.ini"
    preset.write_text(f"[smollm2]\nmodel = {model_path}\nctx-size = 1024\n\n"
                      f"[solo]\nmodel = {model_path}\nctx-size = 1024\n")
    servers = [
        LlamaServer(ServerOptions(binary=llama_server_binary, model=model_path, alias="smollm2", parallel=2),
                    make_runtime_dir()),
        LlamaServer(ServerOptions(binary=llama_server_binary, model=None, alias="smollm2",
                                  router=RouterSource("preset", preset)), make_runtime_dir()),
    ]
    with ExitStack() as exits:
        key_files = []
        for server in servers:
            server.start()
            exits.callback(server.stop)
        forwarders = []
        for n, server in enumerate(servers):
            server.wait_ready(timeout=120, show_progress=False)
            key_file = work / f"key{n}"
            key_file.write_bytes(server.authorization().removeprefix(b"Bearer "))
            key_file.chmod(0o600)
            key_files.append(key_file)
            forwarders.append(exits.enter_context(Forwarder(server.address)))  # type: ignore[arg-type]  # a unix socket path
        args = [arg for f in forwarders for arg in ("--upstream", f"http://127.0.0.1:{f.port}")]
        args += [arg for k in key_files for arg in ("--upstream-key-file", str(k))]
        stack = exits.enter_context(run_stack(*args, "--model-alias", "smollm2", "--loads-per-minute", "60"))
        yield Two(stack, servers, forwarders)


def _grant(stack: Stack, **body: object) -> dict:
    answer = httpx.post(f"{stack.base}/direct-stream", headers={"Authorization": f"Bearer {stack.access_token}"},
                        json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _chat(stack: Stack, body: dict = CHAT, **options: object) -> httpx.Response:
    grant = _grant(stack, **options)
    return httpx.post(grant["url"] + "/v1/chat/completions", json={**body, "model": grant.get("model", "smollm2")},
                      headers={"Authorization": f"Bearer {grant['token']}"}, timeout=120)


def test_models_of_both_upstreams_are_listed(two: Two) -> None:
    answer = httpx.get(f"{two.stack.base}/v1/models",
                       headers={"Authorization": f"Bearer {two.stack.access_token}"}, timeout=10)
    assert {m["id"] for m in answer.json()["data"]} == {"smollm2", "solo"}


def test_sequential_requests_spread_over_both(two: Two) -> None:
    before = two.chats()
    for _ in range(4):
        answer = _chat(two.stack)
        assert answer.status_code == 200 and "data: [DONE]" in answer.text
    after = two.chats()
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2]


def test_a_model_only_one_upstream_serves_is_routed_only_there(two: Two) -> None:
    before = two.chats()
    for _ in range(3):
        answer = _chat(two.stack, model="solo")
        assert answer.status_code == 200, answer.text
    after = two.chats()
    assert [a - b for a, b in zip(after, before, strict=True)] == [0, 3]


def test_kill_9_one_upstream_running_streams_end_and_new_requests_go_to_the_other(two: Two) -> None:
    """Last in this module: it kills the single-model server for good."""
    cut: list[BaseException | None] = []
    started = threading.Event()

    def long_stream() -> None:
        grant = _grant(two.stack)
        body = {**CHAT, "max_tokens": 600, "messages": [{"role": "user", "content": "Count to one thousand."}]}
        try:
            with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body, timeout=120,
                              headers={"Authorization": f"Bearer {grant['token']}"}) as answer:
                for _ in answer.iter_raw():
                    started.set()
            cut.append(None)
        except httpx.HTTPError as error:
            cut.append(error)

    # Each upstream gets one long stream, so one of them certainly runs on the server killed.
    threads = [threading.Thread(target=long_stream) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert started.wait(60)
    os.kill(two.servers[0].pid or 0, signal.SIGKILL)
    for thread in threads:
        thread.join(120)
    assert any(isinstance(error, httpx.RemoteProtocolError) for error in cut), cut  # cut short, not a clean end
    before = two.chats()
    for _ in range(3):
        answer = _chat(two.stack)
        assert answer.status_code == 200, answer.text
        assert "data: [DONE]" in answer.text
    assert two.chats()[1] - before[1] == 3
