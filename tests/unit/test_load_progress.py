"""The router's `/models/sse` events (as build 11434 sends them), read into one fraction per loading model."""

from __future__ import annotations

import json

import pytest

from broker.models import ModelInfo, listing, own_models
from llama_launcher.gate.load_progress import load_fraction

LOADING = '{"model":"beta","event":"model_status","data":{"status":"loading"}}'
STAGE = ('{"model":"beta","event":"status_change","data":{"status":"loading","progress":'
         '{"stages":["text_model"],"current":"text_model","value":%s}}}')
LOADED = ('{"model":"beta","event":"status_change","data":{"status":"loaded","info":{"id":"beta",'
          '"meta":{"n_ctx":2048}}}}')
UNLOADED = '{"model":"alpha","event":"status_change","data":{"status":"unloaded","exit_code":0}}'


def test_the_fraction_of_a_single_stage_load() -> None:
    assert load_fraction(STAGE % "0.0") == ("beta", 0.0)
    assert load_fraction(STAGE % "0.5") == ("beta", 0.5)
    assert load_fraction(STAGE % "1.0") == ("beta", 1.0)


def test_stages_count_as_parts_of_the_whole_load() -> None:
    event = {"model": "v", "event": "status_change", "data": {"status": "loading", "progress": {
        "stages": ["text_model", "mmproj_model"], "current": "mmproj_model", "value": 0.5}}}
    assert load_fraction(json.dumps(event)) == ("v", 0.75)


def test_leaving_loading_clears_and_a_bare_loading_event_changes_nothing() -> None:
    assert load_fraction(LOADED) == ("beta", None)
    assert load_fraction(UNLOADED) == ("alpha", None)
    assert load_fraction(LOADING) is None
    assert load_fraction('{"model":"v","event":"status_change","data":{"status":"loading","stage":"mmproj_model"}}') \
        is None


@pytest.mark.parametrize("data", [
    "not json", "[]", '{"event":"status_change"}', '{"model":7,"data":{"status":"loaded"}}',
    '{"model":"beta","data":"loading"}', STAGE % "true", STAGE % '"0.5"', STAGE % "NaN",
    STAGE.replace('"current":"text_model"', '"current":"other"') % "0.5",
])
def test_anything_else_is_ignored(data: str) -> None:
    assert load_fraction(data) is None


def test_an_out_of_range_value_is_held_to_the_stage() -> None:
    assert load_fraction(STAGE % "7") == ("beta", 1.0)
    assert load_fraction(STAGE % "-1") == ("beta", 0.0)


def test_the_broker_passes_a_loading_models_fraction_on_and_nothing_else() -> None:
    models = ModelInfo.parse_all([
        {"id": "alpha", "status": "loading", "progress": 0.25},
        {"id": "beta", "status": "loaded", "progress": 0.5},
        {"id": "gamma", "status": "loading", "progress": 7},
        {"id": "delta", "status": "loading", "progress": "/models/x.gguf"},
    ])
    assert [model.progress for model in models] == [0.25, None, None, None]
    data = listing(own_models(["alpha", "beta", "gamma", "delta"], models, True))["data"]
    assert [entry.get("progress") for entry in data] == [0.25, None, None, None]
    assert "progress" not in data[1]
