"""The broker reads the gate's `/health` through the contract's parser: the gate's own answers are read
as they are written, and an answer of another shape is a malformed state that names its field."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from health_answers import ready_health

from broker.gate_health import GATE_DOWN, GateHealth
from broker.gate_link import GateLink
from broker.models import ModelInfo
from broker.settings import BrokerSettings
from llama_direct.documents import HealthAnswer, parse_health
from llama_direct.typed_json import MalformedDocument
from llama_launcher.gate.pool import merge_snapshots


def _body(answer: object) -> bytes:
    return json.dumps(answer).encode()


def test_a_ready_answer_is_read_field_by_field() -> None:
    answer = ready_health(not_issued_before=1_750_000_001,
                          models=[{"id": "smol", "status": "loading", "vision": True, "progress": 0.5}])
    assert GateHealth.read(_body(answer)) == GateHealth(
        up=True, model_ready=True, models=(ModelInfo("smol", "loading", True, 0.5),), not_issued_before=1_750_000_001)


def test_the_merged_answer_of_several_upstreams_is_read() -> None:
    merged = merge_snapshots("smol", [ready_health(), ready_health(model_ready=False)], [1, 0])
    merged["jwks"] = [{"host": "broker-2.example", "keys": 1, "age": 3.5}]
    assert parse_health(_body(merged)) == merged
    assert GateHealth.read(_body(merged)).up


@pytest.mark.parametrize(("change", "problem"), [
    ({"gate": "down"}, 'health: gate must be "ok"'),
    ({"model_ready": "yes"}, "health: model_ready must be true or false"),
    ({"slots": {"total": "1", "busy": 0}}, "health: slots.total must be an integer or null"),
    ({"not_issued_before": True}, "health: not_issued_before must be an integer"),
    ({"not_issued_before": 1.5}, "health: not_issued_before must be an integer"),
    ({"models": [{"id": "smol", "status": "gone", "vision": False}]},
     "health: models[0].status must be one of unloaded, loading, loaded"),
    ({"models": [{"id": "smol", "status": "loading", "vision": False, "progress": 7}]},
     "health: models[0].progress must be between 0 and 1"),
    ({"models": [{"id": "smol", "status": "loaded"}]}, "health: models[0] lacks vision"),
    ({"upstreams": [{"ready": True, "models": ["smol"], "in_flight": "2"}]},
     "health: upstreams[0].in_flight must be an integer"),
    ({"surprise": 1}, "health has unknown fields: surprise"),
])
def test_a_malformed_answer_names_its_field(change: dict[str, Any], problem: str) -> None:
    body = _body({**ready_health(), **change})
    with pytest.raises(MalformedDocument) as caught:
        parse_health(body)
    assert str(caught.value) == problem
    assert GateHealth.read(body) == GateHealth(up=False, malformed=problem)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'"ok"', b"null"])
def test_a_body_that_is_no_object_is_malformed_too(body: bytes) -> None:
    health = GateHealth.read(body)
    assert (health.up, health.model_ready) == (False, False)
    assert health.malformed in ("health is not JSON", "health must be an object")


def test_a_missing_field_is_named() -> None:
    partial: dict[str, Any] = dict(ready_health())
    del partial["router"], partial["models"]
    assert GateHealth.read(_body(partial)).malformed == "health lacks models, router"


def test_the_link_logs_a_malformed_answer_once_and_counts_it_as_down(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    answers: list[HealthAnswer | dict[str, Any]] = [{**ready_health(), "model_ready": "yes"}]

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[-1])

    async def main() -> list[GateHealth]:
        settings = BrokerSettings(data_dir=tmp_path / "d", broker_socket=tmp_path / "b.sock",
                                  control_socket=tmp_path / "c.sock", gate_socket=tmp_path / "g.sock", model="smol")
        link = GateLink(settings, httpx.MockTransport(handle))
        await link.start()
        try:
            seen = [link.health]
            await link.poll_once()
            seen.append(link.health)
            answers.append(ready_health())
            await link.poll_once()
            seen.append(link.health)
            return seen
        finally:
            await link.stop()

    with caplog.at_level(logging.INFO, logger="broker.gate_link"):
        first, again, fixed = asyncio.run(main())
    problem = "health: model_ready must be true or false"
    assert first == again == GateHealth(up=False, malformed=problem)
    assert fixed.up and fixed.malformed is None
    malformed = [r.getMessage() for r in caplog.records if "gate_health_malformed" in r.getMessage()]
    assert malformed == [f"event=gate_health_malformed problem={problem!r}"]
    assert GATE_DOWN.malformed is None
