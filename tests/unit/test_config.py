"""The gate's settings file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_launcher.gate.config import GateConfig

BASE = {
    "audience": "gate-1",
    "issuer": "broker-1",
    "broker_socket": "/run/ld/broker.sock",
    "control_socket": "/run/ld/control.sock",
    "private_socket": "/run/ld/gate.sock",
    "model": "smollm2",
}


def test_round_trip_through_the_json_file(tmp_path: Path) -> None:
    config = GateConfig.from_dict({**BASE, "allowed_origins": ["http://a.test"], "two_port": True})
    path = tmp_path / "gate.json"
    path.write_text(json.dumps(config.to_document()))
    loaded = GateConfig.from_file(path)
    assert loaded == config
    assert loaded.allowed_origins == ("http://a.test",)
    assert (loaded.lane_prefix, loaded.max_body_bytes, loaded.head_timeout) == ("/direct", 20 * 1024 * 1024, 5.0)
    assert loaded.tls is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"typo_field": 1}, "gate.json has unknown fields: typo_field"),
        ({"tls_cert": "/c.pem"}, "tls_cert and tls_key go together"),
        ({"lane_prefix": "/direct/"}, "lane_prefix must start with '/' and not end with one"),
        ({"head_timeout": 0}, "timeouts and intervals must be positive"),
        ({"audience": ""}, "audience and issuer must be non-empty"),
    ],
)
def test_bad_settings_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GateConfig.from_dict({**BASE, **change})
