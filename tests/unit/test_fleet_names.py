"""Several gates, one audience: `--audience` and `--issuer` override the data dir's ids when given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.core import BrokerCore
from broker.settings import BrokerSettings, SettingsError
from broker.signing_keys import SigningKey
from llama_direct.keys import PublicKeySet
from llama_direct.refusals import WrongAudience, WrongIssuer
from llama_direct.tokens import Grant, mint, verify
from llama_launcher.cli import _parser
from llama_launcher.gate.config import GateConfig
from llama_launcher.launch_spec import LaunchSpec
from llama_launcher.supervisor import Stack, StackPlan

NOW = 1_700_000_000.0
KEY = SigningKey.generate("ES256")
KEYS = PublicKeySet({KEY.kid: (KEY.algorithm, KEY.public_key)})
GRANT = Grant(routes=(("POST", "/v1/chat/completions"),), model="m", max_tokens=8)


def _token(issuer: str, audience: str = "fleet") -> str:
    return mint(KEY, issuer=issuer, audience=audience, subject="u", scope="chat", grant=GRANT, now=NOW).token


def test_a_gate_accepts_each_listed_issuer_and_no_other() -> None:
    issuers = ("broker-a", "broker-b")
    for issuer in issuers:
        assert verify(_token(issuer), keys=KEYS, audience="fleet", issuer=issuers, now=NOW).iss == issuer
    with pytest.raises(WrongIssuer):
        verify(_token("broker-c"), keys=KEYS, audience="fleet", issuer=issuers, now=NOW)
    with pytest.raises(WrongAudience):
        verify(_token("broker-a", audience="other"), keys=KEYS, audience="fleet", issuer=issuers, now=NOW)


def test_the_gate_config_reads_one_issuer_or_a_list_and_writes_a_list(tmp_path: Path) -> None:
    base = {"audience": "fleet", "broker_socket": "b", "control_socket": "c", "private_socket": "p",
            "model": "m"}
    assert GateConfig.from_dict({**base, "issuer": "a"}).issuer == ("a",)
    config = GateConfig.from_dict({**base, "issuer": ["a", "b"]})
    assert config.issuer == ("a", "b")
    assert GateConfig.from_dict(json.loads(json.dumps(config.to_document()))) == config
    with pytest.raises(ValueError):
        GateConfig.from_dict({**base, "issuer": []})


def test_the_broker_signs_with_the_given_names_else_the_data_dir_ids(tmp_path: Path) -> None:
    def settings(**extra: object) -> BrokerSettings:
        return BrokerSettings(data_dir=tmp_path / "data", broker_socket=tmp_path / "b", control_socket=tmp_path / "c",
                              gate_socket=tmp_path / "g", model="m", **extra)  # type: ignore[arg-type]

    plain = BrokerCore(settings(), "t" * 24)
    assert (plain.issuer().issuer, plain.issuer().audience) == (plain.ids.broker_id, plain.ids.gate_id)
    named = BrokerCore(settings(audience="fleet", issuer="broker-a"), "t" * 24)
    assert (named.issuer().issuer, named.issuer().audience) == ("broker-a", "fleet")
    with pytest.raises(SettingsError):
        settings(audience="has space")


def test_serve_passes_the_names_to_both_children(tmp_path: Path) -> None:
    args = _parser().parse_args(["serve", "--audience", "fleet", "--issuer", "broker-a", "--issuer", "broker-b"])
    assert (args.audience, args.issuer) == ("fleet", ["broker-a", "broker-b"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--issuer", "no/slash"])
    plan = StackPlan(host="127.0.0.1", port=0, data_dir=tmp_path / "data",
                     launch=LaunchSpec(mode="attach", upstreams=["http://127.0.0.1:1"], alias="m", max_tokens=8),
                     access_token="t" * 24, broker_settings={"model": "m", "audience": "fleet", "issuer": "broker-a"},
                     gate_settings={"model": "m"}, audience="fleet", issuers=("broker-a", "broker-b"))
    stack = Stack(plan)
    try:
        gate = GateConfig.from_file(stack.runtime / "gate.json")
        assert (gate.audience, gate.issuer) == ("fleet", ("broker-a", "broker-b"))
        broker = json.loads((stack.runtime / "broker.json").read_text())
        assert (broker["audience"], broker["issuer"]) == ("fleet", "broker-a")
    finally:
        stack.shutdown()
        stack.lock._handle.close()
