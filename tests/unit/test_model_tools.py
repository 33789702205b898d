"""Whether a model's chat template takes tools travels from llama-server's `/props` to the page's
`GET /v1/models`, so the page offers its demo tools only to a model that can call them (issue 29)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.models import ModelInfo, listing, published
from llama_direct.model_states import merge_models
from llama_launcher.gate import health
from llama_launcher.gate.health import Health
from llama_launcher.master_key import MasterKey


class Upstream:
    """What `Health` asks of an upstream: ready, with a key."""

    address = "/nowhere.sock"
    ssl = None
    host_header = b"localhost"

    def __init__(self) -> None:
        self.key = MasterKey.generate()

    def authorization(self) -> bytes:
        return self.key.authorization()

    def is_ready(self) -> bool:
        return True


def snapshot_with(monkeypatch: pytest.MonkeyPatch, props: dict[str, Any]) -> list[Any]:
    """The gate's health `models` for a single llama-server whose `/props` is `props`."""

    async def get_json(upstream: Any, path: str, *, timeout: float) -> tuple[int, Any]:
        return {"/health": (200, {"status": "ok"}), "/props": (200, props), "/slots": (200, [])}[path]

    monkeypatch.setattr(health, "get_json", get_json)
    answer = asyncio.run(Health(Upstream(), "smol").snapshot())
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
