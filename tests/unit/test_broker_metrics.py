"""The broker's metrics: its refusals counted by code, served on the control socket for the gate to append."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from test_broker_budgets import Box, box  # noqa: F401  (the fixture: the real app, store and control app)

from llama_direct.metrics import BROKER_REFUSALS, METRICS_PATH


def refusals(exposition: str, code: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == BROKER_REFUSALS + "_total" and sample.labels == {"code": code}:
                return sample.value
    return 0.0


def test_refusals_are_counted_by_code_and_served_on_the_control_socket(box: Box) -> None:  # noqa: F811
    before = refusals(box.control.get(METRICS_PATH).text, "budget_exhausted")
    _, made = box.add("ann", tokens_per_day=20)
    assert box.negotiate(made.api_key, max_tokens=10).status_code == 200
    assert box.negotiate(made.api_key, max_tokens=10).status_code == 429
    answer = box.control.get(METRICS_PATH)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert refusals(answer.text, "budget_exhausted") == before + 1
    assert made.api_key not in answer.text and "ann" not in answer.text
