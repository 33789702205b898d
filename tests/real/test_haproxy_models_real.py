"""HAProxy in the gate's place routes by the grant's model: `--upstream A=smollm2 --upstream B=other`.

One real llama-server behind two counting forwarders (a single-model llama-server answers whatever
`model` it is sent, so the forwarders show which upstream HAProxy chose). Every model backend runs
every check before anything reaches a server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from forwarder import Forwarder
from haproxy_edge import free_port, haproxy_binary, haproxy_in_gates_place, public_key_file
from hostile_support import signed, swap_payload
from test_haproxy_real import CHAT, KEY, MODEL, Edge, payload, request, token

from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

OTHER = "other"


@pytest.fixture(scope="module")
def routed(llama_server_binary: Path, model_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Edge, Forwarder, Forwarder]]:
    haproxy_binary()  # skip before llama-server starts where HAProxy is missing
    workdir = tmp_path_factory.mktemp("haproxy-models")
    public_key = public_key_file(KEY, workdir)
    server = LlamaServer(ServerOptions(binary=llama_server_binary, model=model_path, alias=MODEL, parallel=1),
                         make_runtime_dir())
    server.start()
    try:
        server.wait_ready(timeout=120, show_progress=False)
        key = server.authorization().decode().removeprefix("Bearer ")
        port = free_port()
        with Forwarder(str(server.address)) as first, Forwarder(str(server.address)) as second, \
                haproxy_in_gates_place(
                    workdir, port, key, "--upstream", f"127.0.0.1:{first.port}={MODEL}",
                    "--upstream", f"127.0.0.1:{second.port}={OTHER}", "--public-key-file", str(public_key),
                    "--audience", "fleet", "--issuer", "broker-a"):
            time.sleep(2.5)  # the first health checks mark both upstreams up
            yield Edge(port, first), first, second
    finally:
        server.stop()


def _chats(forwarder: Forwarder) -> int:
    return len(forwarder.requests(lambda line: line.startswith(b"POST")))


def test_each_grant_reaches_only_an_upstream_that_serves_its_model(
        routed: tuple[Edge, Forwarder, Forwarder]) -> None:
    edge, first, second = routed
    for model, mine, other in ((MODEL, first, second), (OTHER, second, first)):
        before = (_chats(mine), _chats(other))
        for _ in range(2):
            tok = token(grant={"model": model})
            assert edge.exchange(request(tok, body={**CHAT, "model": model})) == 200
        assert (_chats(mine), _chats(other)) == (before[0] + 2, before[1])
    before = (_chats(first), _chats(second))
    # A model no upstream lists: refused after the checks, nothing reached.
    assert edge.exchange(request(token(grant={"model": "gamma"}), body={**CHAT, "model": "gamma"})) == 404
    # The claim that picked the backend is still verified there: a forged model is refused.
    forged = swap_payload(token(), payload(grant={"model": OTHER}))
    assert edge.exchange(request(forged, body={**CHAT, "model": OTHER})) == 401
    assert edge.exchange(request(signed(KEY, payload(grant={"model": OTHER})), body=CHAT)) == 403
    assert (_chats(first), _chats(second)) == before
