"""Whether a model's chat template takes tools travels from llama-server's `/props` to the page's
`GET /v1/models`, so the page offers its demo tools only to a model that can call them (issue 29)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from health_upstream import ReadyUpstream

from broker.models import ModelInfo, listing, published
from llama_direct.model_states import merge_models
from llama_launcher.gate import health
from llama_launcher.gate.health import Health


def snapshot_with(monkeypatch: pytest.MonkeyPatch, props: dict[str, Any]) -> list[Any]:
    """The gate's health `models` for a single llama-server whose `/props` is `props`."""

    async def get_json(upstream: Any, path: str, *, timeout: float) -> tuple[int, Any]:
        return {"/health": (200, {"status": "ok"}), "/props": (200, props), "/slots": (200, [])}[path]

    monkeypatch.setattr(health, "get_json", get_json)
    answer = asyncio.run(Health(ReadyUpstream(), "smol").snapshot())
    return list(answer["models"])


def test_a_template_that_takes_tools_is_listed_with_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    models = snapshot_with(monkeypatch, {"chat_template_caps": {"supports_tools": True, "supports_tool_calls": True}})
    assert models == [{"id": "smol", "status": "loaded", "vision": False, "tools": True}]


@pytest.mark.parametrize("props", [
    {"chat_template_caps": {"supports_tools": False}},
    {"chat_template_caps": {"supports_tools": "yes"}},
    {"chat_template_caps": None},
    {},
])
def test_a_template_without_tools_or_unknown_caps_has_no_tools(monkeypatch: pytest.MonkeyPatch,
                                                                props: dict[str, Any]) -> None:
    assert snapshot_with(monkeypatch, props) == [{"id": "smol", "status": "loaded", "vision": False}]


def test_the_broker_lists_and_publishes_tools_only_where_true() -> None:
    models = ModelInfo.parse_all([{"id": "a", "status": "loaded", "tools": True},
                                  {"id": "b", "status": "loaded", "tools": "true"},
                                  {"id": "c", "status": "unloaded"}])
    assert [model.tools for model in models] == [True, False, False]
    listed = listing(models)["data"]
    assert [entry.get("tools") for entry in listed] == [True, None, None]
    assert [entry.get("tools") for entry in published(models)] == [True, None, None]


def test_merging_keeps_tools_if_any_source_says_so() -> None:
    merged = merge_models([[{"id": "a", "status": "loaded", "vision": False}],
                           [{"id": "a", "status": "unloaded", "vision": False, "tools": True}]])
    assert merged == [{"id": "a", "status": "loaded", "vision": False, "tools": True}]


ROUTER_PROPS = {"role": "router", "default_generation_settings": {"n_ctx": 0}}
"""The router's own `/props`: no template of its own (each model's child has one)."""


def router_snapshots(monkeypatch: pytest.MonkeyPatch, model_props: dict[str, tuple[int, Any]],
                     rounds: int = 2) -> tuple[list[list[Any]], list[str]]:
    """The gate's health `models` for `rounds` snapshots of a router listing alpha (loaded) and beta
    (unloaded), whose `/props?model=NAME&autoload=false` answers `model_props[NAME]`; and every path asked."""
    asked: list[str] = []
    listing = {"data": [{"id": "alpha", "status": {"value": "loaded"}},
                        {"id": "beta", "status": {"value": "unloaded"}}]}

    async def get_json(upstream: Any, path: str, *, timeout: float) -> tuple[int, Any]:
        asked.append(path)
        if path.startswith("/props?model="):
            name, _, rest = path.removeprefix("/props?model=").partition("&")
            assert rest == "autoload=false"  # never a load for a read
            return model_props[name]
        return {"/health": (200, {"status": "ok"}), "/props": (200, ROUTER_PROPS), "/v1/models": (200, listing)}[path]

    monkeypatch.setattr(health, "get_json", get_json)
    monkeypatch.setattr(health, "HEALTH_INTERVAL", 0.0)

    async def run() -> list[list[Any]]:
        checker = Health(ReadyUpstream(), "alpha")
        return [list((await checker.snapshot())["models"]) for _ in range(rounds)]

    return asyncio.run(run()), asked


def test_a_routers_loaded_model_is_listed_with_tools_from_its_own_props(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = {"chat_template_caps": {"supports_tools": True}}
    snapshots, asked = router_snapshots(monkeypatch, {"alpha": (200, caps)})
    for models in snapshots:
        assert models == [{"id": "alpha", "status": "loaded", "vision": False, "tools": True},
                          {"id": "beta", "status": "unloaded", "vision": False}]
    assert [path for path in asked if path.startswith("/props?")] == ["/props?model=alpha&autoload=false"]  # once


def test_a_routers_model_without_tools_or_unread_props_has_no_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots, _ = router_snapshots(monkeypatch, {"alpha": (200, {"chat_template_caps": {"supports_tools": False}})})
    assert all("tools" not in model for models in snapshots for model in models)
    failed, asked = router_snapshots(monkeypatch, {"alpha": (400, {"error": "model is not loaded"})})
    assert all("tools" not in model for models in failed for model in models)
    retried = [path for path in asked if path.startswith("/props?")]
    assert retried == ["/props?model=alpha&autoload=false"]  # not at once: after PROPS_RETRY
