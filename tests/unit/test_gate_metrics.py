"""The gate's metrics: the core's counts read back by Prometheus's own parser, and `/metrics` on a running
gate (fake llama-server and broker), served only with the metrics token."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from gate_fakes import Client, Harness, chat_request, running_gate
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import BrokerMetrics
from llama_direct import metrics as names
from llama_direct.lanes import LANE_ROUTES
from llama_direct.metrics import metrics_token_matches
from llama_launcher.access_token import stored_metrics_token
from llama_launcher.errors import LauncherError
from llama_launcher.gate.metrics import (
    BASELINE,
    DIRECT,
    DURATION_BUCKETS,
    OTHER_ROUTE,
    TTFB_BUCKETS,
    GateMetrics,
    UserLabels,
)

TOKEN = "metrics-token-for-tests-0123456789"
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-llama-direct.json"


def samples(exposition: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels, as a scraper reads it."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(exposition.decode())
            for sample in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_the_core_counts_what_the_connections_tell_it() -> None:
    metrics = GateMetrics()
    assert metrics.route_of(b"POST", b"/direct/v1/chat/completions") == "chat"
    assert metrics.route_of(b"GET", b"/direct/v1/stream?conv_id=c&from=3") == "resume"
    assert metrics.route_of(b"GET", b"/direct/v1/chat/completions") == OTHER_ROUTE
    for _ in range(3):
        metrics.answered("chat", DIRECT, 200)
    metrics.answered("chat", BASELINE, 401)
    metrics.refused("missing_token")
    metrics.stream_began(DIRECT)
    metrics.stream_began(DIRECT)
    metrics.first_byte("chat", DIRECT, 0.2)
    metrics.stream_ended("chat", DIRECT, 3.0)
    metrics.tokens("smol", "user-1", 12, 40)
    metrics.tokens("smol", "user-2", 8, 2)
    metrics.loaded("smol")
    metrics.watch_upstreams(lambda: [("up-a", True, 1), ("up-b", False, 0)])
    found = samples(metrics.render())
    assert value(found, names.REQUESTS + "_total", route="chat", lane=DIRECT, status="200") == 3
    assert value(found, names.REQUESTS + "_total", route="chat", lane=BASELINE, status="401") == 1
    assert value(found, names.REFUSALS + "_total", code="missing_token") == 1
    assert value(found, names.STREAMS_IN_FLIGHT, lane=DIRECT) == 1
    assert value(found, names.STREAMS_IN_FLIGHT, lane=BASELINE) == 0
    assert value(found, names.TIME_TO_FIRST_BYTE + "_count", route="chat", lane=DIRECT) == 1
    assert value(found, names.TIME_TO_FIRST_BYTE + "_bucket", route="chat", lane=DIRECT, le="0.25") == 1
    assert value(found, names.TIME_TO_FIRST_BYTE + "_bucket", route="chat", lane=DIRECT, le="0.1") == 0
    assert value(found, names.STREAM_DURATION + "_sum", route="chat", lane=DIRECT) == 3.0
    assert value(found, names.PROMPT_TOKENS + "_total", model="smol") == 20
    assert value(found, names.COMPLETION_TOKENS + "_total", model="smol") == 42
    assert value(found, names.MODEL_LOADS + "_total", model="smol") == 1
    assert value(found, names.UPSTREAM_UP, upstream="up-a") == 1
    assert value(found, names.UPSTREAM_UP, upstream="up-b") == 0
    assert value(found, names.UPSTREAM_IN_FLIGHT, upstream="up-a") == 1
    assert not any("user" in dict(labels) for _, labels in found), "users are labelled only when asked"


def test_per_user_tokens_are_bounded_by_an_other_label() -> None:
    labels = UserLabels(limit=2)
    assert [labels.label(u) for u in ("a", "b", "c", "a", "d")] == ["a", "b", names.OTHER_USER, "a", names.OTHER_USER]
    metrics = GateMetrics(per_user=True)
    assert metrics.users is not None
    metrics.users.limit = 1
    metrics.tokens("smol", "first", 1, 5)
    metrics.tokens("smol", "second", 1, 7)
    metrics.tokens("smol", "third", 1, 11)
    found = samples(metrics.render())
    assert value(found, names.COMPLETION_TOKENS + "_total", model="smol", user="first") == 5
    assert value(found, names.COMPLETION_TOKENS + "_total", model="smol", user=names.OTHER_USER) == 18
    assert len([k for k in found if k[0] == names.COMPLETION_TOKENS + "_total"]) == 2


def prometheus_reference(per_user: bool) -> tuple[CollectorRegistry, Callable[[GateMetrics], None]]:
    """The gate's metrics as `prometheus_client`'s own classes write them, and the calls that count in both."""
    registry = CollectorRegistry()
    requests = Counter(names.REQUESTS, "Lane requests answered", ["route", "lane", "status"], registry=registry)
    refusals = Counter(names.REFUSALS, "The gate's refusals", ["code"], registry=registry)
    token_labels = ["model", "user"] if per_user else ["model"]
    prompt = Counter(names.PROMPT_TOKENS, "Prompt tokens llama-server reported", token_labels, registry=registry)
    completion = Counter(names.COMPLETION_TOKENS, "Completion tokens llama-server reported", token_labels,
                         registry=registry)
    ttfb = Histogram(names.TIME_TO_FIRST_BYTE, "From a lane request's head to its answer's first body byte",
                     ["route", "lane"], buckets=TTFB_BUCKETS, registry=registry)
    duration = Histogram(names.STREAM_DURATION, "From a lane request's head to its answer's end", ["route", "lane"],
                         buckets=DURATION_BUCKETS, registry=registry)
    for route in [*sorted({r.name for r in LANE_ROUTES}), OTHER_ROUTE]:
        for lane in (DIRECT, BASELINE):
            ttfb.labels(route, lane), duration.labels(route, lane)
    flying = Gauge(names.STREAMS_IN_FLIGHT, "Lane answers being relayed now", ["lane"], registry=registry)
    loads = Counter(names.MODEL_LOADS, "Model loads a router started for this gate's requests", ["model"],
                    registry=registry)
    Gauge(names.BROKER_UP, "1 when the broker's metrics were read for this scrape", registry=registry).set(1)
    flying.labels(DIRECT).set(2)
    flying.labels(BASELINE).set(0)
    user = (lambda u: [u]) if per_user else (lambda u: [])

    def count(metrics: GateMetrics) -> None:
        for route, lane, status in [("chat", DIRECT, 200)] * 3 + [("chat", BASELINE, 401), (OTHER_ROUTE, DIRECT, 499)]:
            metrics.answered(route, lane, status)
            requests.labels(route, lane, str(status)).inc()
        for code in ("missing_token", "invalid_token", "missing_token"):
            metrics.refused(code)
            refusals.labels(code).inc()
        metrics.stream_began(DIRECT), metrics.stream_began(DIRECT)
        for seconds in (0.0001, 0.005, 0.0051, 0.25, 3.0, 61.0, 1e6):
            metrics.first_byte("chat", DIRECT, seconds)
            ttfb.labels("chat", DIRECT).observe(seconds)
            metrics.stream_ended("resume", BASELINE, seconds * 3)
            duration.labels("resume", BASELINE).observe(seconds * 3)
            metrics.stream_began(BASELINE)
        for model, sub, prompt_tokens, completion_tokens in [("smol", "u1", 12, 40), ("big", "u2", 0, 3),
                                                                ("smol", "u1", 5, 0)]:
            metrics.tokens(model, sub, prompt_tokens, completion_tokens)
            prompt.labels(model, *user(sub)).inc(prompt_tokens)
            completion.labels(model, *user(sub)).inc(completion_tokens)
        for model in ("smol", "big", "smol"):
            metrics.loaded(model)
            loads.labels(model).inc()
        metrics.broker_up.set(1)

    return registry, count


@pytest.mark.parametrize("per_user", [False, True])
def test_the_exposition_is_what_prometheus_clients_own_metrics_write(per_user: bool) -> None:
    registry, count = prometheus_reference(per_user)
    metrics = GateMetrics(per_user=per_user)
    count(metrics)
    created = re.compile(rb"^(\S+_created\S*) \S+$", re.MULTILINE)  # when a series began: a clock's reading
    assert created.sub(rb"\1", metrics.render()) == created.sub(rb"\1", generate_latest(registry))


def test_the_token_is_a_bearer_compared_whole() -> None:
    assert metrics_token_matches(b"Bearer " + TOKEN.encode(), TOKEN)
    assert metrics_token_matches(b"bearer " + TOKEN.encode(), TOKEN)
    assert not metrics_token_matches(b"Bearer " + TOKEN[:-1].encode(), TOKEN)
    assert not metrics_token_matches(b"Basic " + TOKEN.encode(), TOKEN)
    assert not metrics_token_matches(None, TOKEN)
    assert not metrics_token_matches(b"Bearer ", None), "no token configured: never open"


def run(scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running_gate() as harness:
            await scenario(harness)

    asyncio.run(asyncio.wait_for(main(), 120))


async def ask(where: int | str, raw: bytes) -> object:
    client = await Client.open(where)
    try:
        await client.send(raw)
        return await client.response(timeout=60)
    finally:
        client.close()


def scrape(token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n".encode() if token is not None else b""
    return b"GET /metrics HTTP/1.1\r\nHost: gate\r\n" + auth + b"\r\n"


def test_metrics_count_a_running_gate_and_answer_only_with_the_token() -> None:
    async def scenario(h: Harness) -> None:
        assert h.port is not None
        refused = await ask(h.port, scrape(TOKEN))
        assert refused.status == 401, "no token configured: /metrics is refused, never open"  # type: ignore[attr-defined]
        h.server.gate.metrics_token = TOKEN
        direct = await ask(h.port, chat_request(h.token()))
        baseline = await ask(h.config.private_socket, chat_request(h.token()))
        anonymous = await ask(h.port, chat_request(None))
        assert [r.status for r in (direct, baseline, anonymous)] == [200, 200, 401]  # type: ignore[attr-defined]
        for wrong in (None, "not-the-token"):
            answer = await ask(h.port, scrape(wrong))
            assert answer.status == 401  # type: ignore[attr-defined]
            assert answer.json()["error"]["reason"] in ("missing_token", "invalid_token")  # type: ignore[attr-defined]
            assert names.PREFIX.encode() not in answer.body  # type: ignore[attr-defined]
        answer = await ask(h.port, scrape(TOKEN))
        assert answer.status == 200  # type: ignore[attr-defined]
        assert answer.header(b"content-type")[0].startswith(b"text/plain")  # type: ignore[attr-defined]
        found = samples(answer.body)  # type: ignore[attr-defined]
        assert value(found, names.REQUESTS + "_total", route="chat", lane=DIRECT, status="200") == 1
        assert value(found, names.REQUESTS + "_total", route="chat", lane=BASELINE, status="200") == 1
        assert value(found, names.REQUESTS + "_total", route="chat", lane=DIRECT, status="401") == 1
        assert value(found, names.REFUSALS + "_total", code="missing_token") == 2  # the chat, the scrape
        assert value(found, names.REFUSALS + "_total", code="invalid_token") == 2  # before a token was set, a wrong one
        assert value(found, names.TIME_TO_FIRST_BYTE + "_count", route="chat", lane=DIRECT) == 1
        assert value(found, names.STREAM_DURATION + "_count", route="chat", lane=BASELINE) == 1
        assert value(found, names.STREAMS_IN_FLIGHT, lane=DIRECT) == 0
        assert value(found, names.UPSTREAM_UP, upstream=h.server.pool.first.key) == 1
        assert value(found, names.BROKER_UP) == 0, "the fake control socket serves no metrics"
        assert TOKEN.encode() not in answer.body  # type: ignore[attr-defined]

    run(scenario)


def test_the_metrics_token_is_made_once_in_the_data_dir_readable_by_its_owner_only(tmp_path: Path) -> None:
    token = stored_metrics_token(tmp_path / "data")
    path = tmp_path / "data" / names.METRICS_TOKEN_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert stored_metrics_token(tmp_path / "data") == token and len(token) >= 16
    path.chmod(0o644)
    with pytest.raises(LauncherError, match="readable by others"):
        stored_metrics_token(tmp_path / "data")


def test_every_metric_the_dashboard_queries_is_one_the_gate_or_the_broker_exposes() -> None:
    metrics = GateMetrics(per_user=True)
    metrics.watch_upstreams(lambda: [("up-a", True, 0)])
    exposition = (metrics.render() + BrokerMetrics().render()).decode()
    exposed = {family.name for family in text_string_to_metric_families(exposition)}
    queried = set(re.findall(r"llama_direct_[a-z_]+", DASHBOARD.read_text()))
    assert len(queried) >= 10
    assert {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in queried} <= exposed


def test_a_stream_whose_client_held_back_the_gate_s_writes_is_counted_ended() -> None:
    """asyncio pauses and resumes a connection's writing when its client reads slowly; that must not
    clear the stream's in-flight mark, or its end is never counted and the gauge stays up for good."""
    async def scenario(h: Harness) -> None:
        assert h.port is not None
        h.server.gate.metrics_token = TOKEN
        h.behaviour.events, h.behaviour.delay = 40, 0.02
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        for _ in range(2000):  # until the gate relays the stream: an event, polled; no time is asserted
            flying = [c for c in h.server.gate.connections if getattr(c, "flying", False)]
            if flying:
                break
            await asyncio.sleep(0.01)
        (connection,) = flying
        connection.pause_writing()  # type: ignore[attr-defined]
        connection.resume_writing()  # type: ignore[attr-defined]
        assert (await client.response(timeout=60)).status == 200
        client.close()
        found = samples((await ask(h.port, scrape(TOKEN))).body)  # type: ignore[attr-defined]
        assert value(found, names.STREAMS_IN_FLIGHT, lane=DIRECT) == 0
        assert value(found, names.STREAM_DURATION + "_count", route="chat", lane=DIRECT) == 1

    run(scenario)
