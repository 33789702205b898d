"""The three files serve writes for its children, typed once in `llama_direct.config_files`: what the
supervisor writes from serve's flags each reader reads back as it was meant, and a file of another
shape is refused with the file and the field named, never a value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.settings import BrokerSettings, SettingsError
from llama_direct.config_files import GateFile, LaunchFile
from llama_direct.runtime import BROKER_CONFIG_FILE, GATE_CONFIG_FILE, LAUNCH_FILE, RUNTIME_ENV
from llama_direct.typed_json import MalformedDocument, check_document
from llama_launcher import cli
from llama_launcher.gate.config import GateConfig
from llama_launcher.launch_spec import LaunchSpec
from llama_launcher.supervisor import Stack


@pytest.fixture
def written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The runtime dir of a stack planned from serve's flags (attached, two ports, a second broker's
    JWKS), its three files written and nothing started."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_DIRECT_UPSTREAM_KEY", raising=False)
    args = cli._parser().parse_args([
        "serve", "--upstream", "http://127.0.0.1:9", "--model-alias", "smol", "--port", "0", "--gate-port", "0",
        "--data-dir", str(tmp_path / "data"), "--allow-origin", "https://app.example", "--issuer", "broker-a",
        "--issuer", "broker-b", "--issuer-jwks", "broker-b=https://b.example/jwks.json", "--audience", "fleet",
        "--trusted-proxy", "10.0.0.1", "--max-connections", "99", "--token-ttl", "20", "--algorithm", "ES256",
    ])
    stack = Stack(cli.stack_plan(args, access_token="t" * 24))
    try:
        yield stack.runtime
    finally:
        stack.shutdown()
        stack.lock._handle.close()


def test_what_serve_writes_each_child_reads_back(written: Path) -> None:
    broker = BrokerSettings.from_file(written / BROKER_CONFIG_FILE)
    assert (broker.model, broker.token_ttl, broker.algorithm, broker.audience, broker.issuer) == (
        "smol", 20, "ES256", "fleet", "broker-a")
    assert broker.allowed_origins == ("https://app.example",) and broker.gate_port is not None
    assert broker.gate_socket == written / "gate.sock" and broker.data_dir.name == "data"
    gate = GateConfig.from_file(written / GATE_CONFIG_FILE)
    assert (gate.model, gate.audience, gate.issuer) == ("smol", "fleet", ("broker-a", "broker-b"))
    assert (gate.two_port, gate.max_connections, gate.trusted_proxies) == (True, 99, ("10.0.0.1",))
    assert gate.issuer_jwks == (("broker-b", "https://b.example/jwks.json"),)
    assert "https://app.example" in gate.allowed_origins
    assert gate.private_socket == str(written / "gate.sock")
    launch = LaunchSpec.read(written / LAUNCH_FILE)
    assert (launch.mode, launch.upstreams, launch.alias) == ("attach", ["http://127.0.0.1:9"], "smol")


def test_each_writer_writes_what_its_definition_says(written: Path) -> None:
    gate = json.loads((written / GATE_CONFIG_FILE).read_text())
    assert check_document(gate, GateFile, name=GATE_CONFIG_FILE) == gate
    assert GateConfig.from_document(GateConfig.from_file(written / GATE_CONFIG_FILE).to_document()) \
        == GateConfig.from_file(written / GATE_CONFIG_FILE)
    launch = LaunchSpec.read(written / LAUNCH_FILE)
    assert check_document(launch.to_document(), LaunchFile, name=LAUNCH_FILE) == json.loads(
        (written / LAUNCH_FILE).read_text())
    assert LaunchSpec(**launch.to_document()) == launch


READERS = {GATE_CONFIG_FILE: GateConfig.from_file, LAUNCH_FILE: LaunchSpec.read}


@pytest.mark.parametrize(("name", "change", "message"), [
    (GATE_CONFIG_FILE, {"max_connections": "99"}, "gate.json: max_connections must be an integer"),
    (GATE_CONFIG_FILE, {"issuer_jwks": [["broker-b"]]}, "gate.json: issuer_jwks[0] must hold 2 items"),
    (GATE_CONFIG_FILE, {"two_port": 1}, "gate.json: two_port must be true or false"),
    (GATE_CONFIG_FILE, {"typo": 1}, "gate.json has unknown fields: typo"),
    (LAUNCH_FILE, {"mode": "borrow"}, 'launch.json: mode must be "launch" or "attach"'),
    (LAUNCH_FILE, {"upstreams": "http://127.0.0.1:9"}, "launch.json: upstreams must be an array"),
    (LAUNCH_FILE, {"model_paths": {"a": 1}}, "launch.json: model_paths.a must be a string"),
])
def test_a_malformed_file_names_the_field(written: Path, name: str, change: dict[str, Any], message: str) -> None:
    path = written / name
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(MalformedDocument) as caught:
        READERS[name](path)
    assert str(caught.value) == message


def test_a_gate_file_without_its_sockets_is_refused(written: Path) -> None:
    path = written / GATE_CONFIG_FILE
    gate = json.loads(path.read_text())
    del gate["private_socket"]
    path.write_text(json.dumps(gate))
    with pytest.raises(MalformedDocument, match=r"^gate\.json lacks private_socket$"):
        GateConfig.from_file(path)


def test_a_malformed_broker_file_is_a_settings_error_without_the_value(written: Path) -> None:
    path = written / BROKER_CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "signing_key_file": ["/secret/key.pem"]}))
    with pytest.raises(SettingsError) as caught:
        BrokerSettings.from_file(path)
    assert str(caught.value) == "broker.json: signing_key_file must be a string or null"


def test_the_gate_process_refuses_a_malformed_file_before_it_starts_anything(written: Path) -> None:
    path = written / GATE_CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "streams_per_user": 1.5}))
    ran = subprocess.run([sys.executable, "-m", "llama_launcher.gate_process"], capture_output=True, text=True,
                         env={**os.environ, RUNTIME_ENV: str(written)}, timeout=120, check=False)
    assert ran.returncode == 2
    assert "cannot start: gate.json: streams_per_user must be an integer" in ran.stderr
