"""/metrics end to end: serve in front of a real llama-server, scraped with the metrics token and read by
Prometheus's own parser; the completion tokens it counts are the ones llama-server reported."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from stack import Stack, run_stack

from llama_direct import metrics as names

pytestmark = pytest.mark.real

TOKEN = "metrics-" + secrets.token_urlsafe(24)
PROMPT = "Name three colours of the sea."
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-llama-direct.json"


@pytest.fixture(scope="module")
def metered(llama_server_binary: Path, model_path: Path) -> Iterator[Stack]:
    env = {names.METRICS_TOKEN_ENV: TOKEN}
    with run_stack("--llama-server", str(llama_server_binary), "--verbose", "--metrics-port", "0",
                   "--metrics-per-user", env=env) as running:
        yield running


def scrape(base: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(base + names.METRICS_PATH, headers=headers, timeout=30)


def total(exposition: str, sample_name: str, **labels: str) -> float:
    """The sum of a sample over every label set that holds `labels` (0 when there is none yet)."""
    return sum(sample.value for family in text_string_to_metric_families(exposition) for sample in family.samples
               if sample.name == sample_name and labels.items() <= sample.labels.items())


def families(exposition: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(exposition)}


def stream_usage(stack: Stack, max_tokens: int) -> tuple[str, int]:
    """One reply streamed through the lane: the model and the completion tokens llama-server reported."""
    grant = stack.negotiate()
    body = {"messages": [{"role": "user", "content": PROMPT}], "stream": True, "max_tokens": max_tokens,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {grant['token']}"}, timeout=120) as answer:
        assert answer.status_code == 200
        events = [json.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: {")]
    usage = [event["usage"] for event in events if event.get("usage")]
    assert usage, "llama-server reports usage in the stream's last event when include_usage is asked"
    return grant["model"], int(usage[-1]["completion_tokens"])


def test_metrics_show_the_tokens_llama_server_reported_and_only_with_the_token(metered: Stack) -> None:
    for token in (None, "not-" + TOKEN):
        refused = scrape(metered.base, token)
        assert refused.status_code == 401
        assert refused.json()["error"]["reason"] in ("missing_token", "invalid_token")
        assert names.PREFIX not in refused.text
    before = scrape(metered.base, TOKEN)
    assert before.status_code == 200
    completion = names.COMPLETION_TOKENS + "_total"
    counted_before = total(before.text, completion)

    reported = [stream_usage(metered, n) for n in (8, 12, 16)]
    model = reported[0][0]
    after = scrape(metered.base, TOKEN)
    assert after.status_code == 200
    text = after.text
    assert total(text, completion, model=model, user="local") - total(before.text, completion, model=model,
                                                                        user="local") == sum(n for _, n in reported)
    assert total(text, completion) - counted_before == sum(n for _, n in reported)
    assert total(text, names.PROMPT_TOKENS + "_total", model=model) > 0
    direct = {"route": "chat", "lane": "direct"}
    assert total(text, names.REQUESTS + "_total", status="200", **direct) >= 3
    assert total(text, names.TIME_TO_FIRST_BYTE + "_count", **direct) >= 3
    assert total(text, names.STREAM_DURATION + "_count", **direct) >= 3
    assert total(text, names.STREAMS_IN_FLIGHT) == 0
    assert total(text, names.UPSTREAM_UP) == 1
    assert total(text, names.BROKER_UP) == 1, "the broker's own metrics are appended"
    assert names.BROKER_REFUSALS in families(text)
    for secret in (TOKEN, metered.access_token, PROMPT):
        assert secret not in text


def test_the_metrics_port_answers_the_same_only_with_the_token(metered: Stack) -> None:
    found = re.search(r"metrics port=(\d+)", metered.log_text())
    assert found, "serve names the port it bound for --metrics-port"
    base = f"http://127.0.0.1:{found.group(1)}"
    assert scrape(base, None).status_code == 401
    answer = scrape(base, TOKEN)
    assert answer.status_code == 200
    assert names.REQUESTS in families(answer.text)
    assert httpx.get(base + "/", timeout=30).status_code == 404, "the metrics port serves nothing else"


def test_every_metric_the_dashboard_queries_is_in_the_exposition(metered: Stack) -> None:
    exposition = families(scrape(metered.base, TOKEN).text)
    queried = set(re.findall(r"llama_direct_[a-z_]+", DASHBOARD.read_text()))
    assert queried
    base = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in queried}
    assert base <= exposition, sorted(base - exposition)
