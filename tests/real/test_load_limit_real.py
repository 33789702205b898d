"""The load limit holds however grants are minted (issue 25, finding 4), against a real router.

The broker once charged a load at negotiation, when it saw the model `unloaded`: a grant minted
while its model was loaded cost nothing, yet used after an eviction it loaded the model. Alternating
such grants for two models made 44 loads in 61 s with `--loads-per-minute 2`. The gate now charges
the request that causes the load, as it routes it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from stack import Stack, run_stack

from llama_direct.metrics import METRICS_PATH, METRICS_TOKEN_FILE, MODEL_LOADS, REFUSALS

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

LIMIT = 2
PROMPT = {"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2}


@pytest.fixture(scope="module")
def router(llama_server_binary: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    preset = tmp_path_factory.mktemp("preset") / "models.ini"
    preset.write_text(f"[alpha]\nmodel = {model_path}\nctx-size = 1024\n\n"
                      f"[beta]\nmodel = {model_path}\nctx-size = 1024\n")
    with run_stack("--llama-server", str(llama_server_binary), "--models-preset", str(preset),
                   "--models-max", "1", "--loads-per-minute", str(LIMIT)) as running:
        yield running


def _grant(stack: Stack, model: str) -> dict:
    answer = httpx.post(f"{stack.base}/direct-stream", headers={"Authorization": f"Bearer {stack.access_token}"},
                        json={"model": model}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _chat(grant: dict) -> httpx.Response:
    return httpx.post(grant["url"] + "/v1/chat/completions", json=PROMPT, timeout=120,
                      headers={"Authorization": f"Bearer {grant['token']}"})


def _only_loaded(stack: Stack, model: str) -> bool:
    """Whether the broker's listing (polled from the gate) comes to show `model` alone loaded."""
    for _ in range(100):
        answer = httpx.get(f"{stack.base}/v1/models", headers={"Authorization": f"Bearer {stack.access_token}"})
        states = {m["id"]: m["status"] for m in answer.json()["data"]}
        if states[model] == "loaded" and list(states.values()).count("loaded") == 1:
            return True
        time.sleep(0.1)
    return False


def test_grants_minted_while_their_model_was_loaded_still_pay_for_the_loads_they_cause(router: Stack) -> None:
    started = time.monotonic()
    first = _chat(_grant(router, "alpha"))
    assert first.status_code == 200, first.text  # load 1: alpha
    held = {"alpha": _grant(router, "alpha")}  # minted while alpha is loaded: free at negotiation
    loads, refused = 1, []
    model = "beta"
    for _ in range(6):
        answer = _chat(held.pop(model, None) or _grant(router, model))
        if answer.status_code == 200:
            loads += 1
            other = "alpha" if model == "beta" else "beta"
            assert _only_loaded(router, model), "each success evicted the other model: a load"
            held[model] = _grant(router, model)  # minted while its model is loaded, used after an eviction
            model = other
        else:
            refused.append(answer)
    allowed = LIMIT + math.floor((time.monotonic() - started) / (60 / LIMIT))  # the bucket refills meanwhile
    assert loads <= allowed, f"{loads} loads with --loads-per-minute {LIMIT}"
    assert refused, "nothing was refused"
    assert all(r.status_code == 429 and r.json()["error"]["reason"] == "rate_limited" for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    counted = _metrics(router)
    assert counted.get(MODEL_LOADS + "_total", 0) == loads, "/metrics counts each load the gate let a router start"
    assert counted.get(REFUSALS + "_total", 0) >= len(refused)


def _metrics(stack: Stack) -> dict[str, float]:
    """The stack's /metrics, scraped with the metrics token serve made in its data dir, each sample summed
    over its labels."""
    token = (stack.data_dir / METRICS_TOKEN_FILE).read_text().strip()
    answer = httpx.get(stack.base + METRICS_PATH, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if family.name != REFUSALS or sample.labels.get("code") == "rate_limited":
                sums[sample.name] = sums.get(sample.name, 0) + sample.value
    return sums
