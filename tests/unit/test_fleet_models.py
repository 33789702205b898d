"""The fleet's model list: each broker publishes its models in Redis, and lists the union (a real
redis-server); the merge is the gate's (best state wins)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from broker_harness import ACCESS_TOKEN, BEARER, HOST, READY, FakeGate, _settings
from fastapi.testclient import TestClient
from redis_server import RedisServer

from broker.app import create_app
from broker.core import BrokerCore
from broker.fleet_models import ENTRY_TTL_SECONDS, MODELS_PREFIX, PUBLISH_SECONDS, FleetModels
from broker.models import ModelInfo, fleet_listing, published
from broker.shared_state import sync_client


def _ids(answer: dict) -> list[tuple[str, str]]:
    return [(entry["id"], entry["status"]) for entry in answer["data"]]


def test_the_listing_is_the_union_at_each_models_best_state() -> None:
    own = [ModelInfo("alpha", "loaded"), ModelInfo("shared", "unloaded")]
    others: list[object] = [
        [{"id": "beta", "status": "loading", "vision": True, "progress": 0.5}, {"id": "shared", "status": "loaded"}],
        [{"id": "gamma", "status": "nonsense"}, {"status": "loaded"}, "junk", {"id": "delta", "status": "loaded",
                                                                              "args": ["--model", "/secret.gguf"]}],
        None,
    ]
    answer = fleet_listing(own, others)
    assert _ids(answer) == [("alpha", "loaded"), ("shared", "loaded"), ("beta", "loading"), ("gamma", "unloaded"),
                            ("delta", "loaded")]
    beta = answer["data"][2]
    assert beta["vision"] is True and beta["progress"] == 0.5 and beta["object"] == "model"
    assert "args" not in json.dumps(answer) and "secret" not in json.dumps(answer)


def test_brokers_publish_and_read_each_others_models(redis_server: RedisServer) -> None:
    client = sync_client(redis_server.url)
    a = FleetModels(client, "fleet", "broker-a")
    b = FleetModels(client, "fleet", "broker-b")
    elsewhere = FleetModels(client, "other-fleet", "broker-c")
    now = 1000.0
    a.publish(published([ModelInfo("alpha", "loaded")]), now)
    b.publish(published([ModelInfo("beta", "loading", progress=0.25)]), now)
    elsewhere.publish(published([ModelInfo("gamma", "loaded")]), now)
    assert a.others(now) == [[{"id": "beta", "status": "loading", "vision": False, "progress": 0.25}]]
    assert b.others(now) == [[{"id": "alpha", "status": "loaded", "vision": False}]]
    # An entry past its life is not listed, whatever Redis still holds; the key itself expires too.
    assert a.others(now + ENTRY_TTL_SECONDS + 1) == []
    assert 0 < client.ttl(MODELS_PREFIX + "fleet") <= ENTRY_TTL_SECONDS + 1


def test_publishing_is_throttled_unless_the_models_changed(redis_server: RedisServer) -> None:
    client = sync_client(redis_server.url)
    a = FleetModels(client, "fleet", "broker-a")
    b = FleetModels(client, "fleet", "broker-b")
    loading = published([ModelInfo("alpha", "loading")])
    a.publish(loading, 0.0)
    client.hdel(MODELS_PREFIX + "fleet", "broker-a")
    a.publish(loading, PUBLISH_SECONDS / 2)  # the same models again, too soon: not written
    assert b.others(1.0) == []
    a.publish(published([ModelInfo("alpha", "loaded")]), PUBLISH_SECONDS / 2)  # a change is written at once
    assert b.others(1.0) == [[{"id": "alpha", "status": "loaded", "vision": False}]]


def test_redis_down_lists_nothing_from_elsewhere_and_publishing_never_raises(redis_server: RedisServer) -> None:
    client = sync_client(redis_server.url, timeout=0.2)
    a = FleetModels(client, "fleet", "broker-a")
    redis_server.stop()
    a.publish(published([ModelInfo("alpha", "loaded")]), 0.0)
    assert a.others(0.0) == []
    assert _ids(fleet_listing([ModelInfo("alpha", "loaded")], a.others(0.0))) == [("alpha", "loaded")]


def test_models_behind_an_edge_lists_the_fleet_and_negotiation_still_grants_only_its_own(
        redis_server: RedisServer, tmp_path: Path) -> None:
    health = {**READY, "models": [{"id": "smol", "status": "loaded", "vision": False}]}
    settings = _settings(tmp_path, audience="fleet", issuer="broker-a")
    core = BrokerCore(settings, ACCESS_TOKEN, gate_transport=httpx.MockTransport(FakeGate(health=health).handle),
                      redis_url=redis_server.url)
    other = FleetModels(sync_client(redis_server.url), "fleet", "broker-b")
    other.publish(published([ModelInfo("beta", "loaded", vision=True), ModelInfo("smol", "unloaded")]), time.time())
    with TestClient(create_app(settings, ACCESS_TOKEN, core=core), base_url=f"http://{HOST}") as client:
        listed = client.get("/v1/models", headers=BEARER).json()
        assert _ids(listed) == [("smol", "loaded"), ("beta", "loaded")]
        assert listed["data"][1]["vision"] is True
        # This broker published its own gate's models for the others (when it read its health).
        assert other.others(time.time()) == [[{"id": "smol", "status": "loaded", "vision": False}]]
        # A model only another machine serves is not granted here: the edge routes its negotiation there.
        refused = client.post("/direct-stream", headers=BEARER, json={"model": "beta"})
        assert (refused.status_code, refused.json()["error"]["reason"]) == (400, "unknown_model")
