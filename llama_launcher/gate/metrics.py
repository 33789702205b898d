"""The gate's Prometheus metrics: what it sees of every lane request, in a registry of its own.

The gate is the one process that sees every direct and baseline request, its status, its first
byte and its end, the loads it causes and each upstream's health, so it counts them, and it serves
`/metrics` (`llama_direct.metrics`), the broker's own exposition appended. On the hot path a request
costs a few counter increments and two histogram observations, through children looked up once per
label set; no chunk of a stream is looked at for metrics (the first byte's time is noted once).
Upstream health is read only when scraped (`UpstreamCollector`).

Nothing here holds a prompt, a reply or a secret: labels are route names, lanes, statuses, refusal
codes, model names, upstream keys (digests) and, with `--metrics-per-user`, grant subjects (stable
random ids, never names or keys), at most `MAX_METRIC_USERS` of them.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llama_direct import metrics as names
from llama_direct.lanes import LANE_PREFIX, LANE_ROUTES
from llama_direct.metrics import METRICS_PATH

DIRECT = "direct"
BASELINE = "baseline"
LANES = (DIRECT, BASELINE)
OTHER_ROUTE = "other"
CLIENT_LEFT = 499
"""The status counted for a request whose client left before any answer (nginx's convention)."""
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BROKER_TIMEOUT = 2.0
MAX_BROKER_BYTES = 1024 * 1024
"""The most of the broker's exposition a scrape appends: its few counters take a few kilobytes."""
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class UserLabels:
    """Pure: the label of each user, their own for the first `limit` users seen, `OTHER_USER` after."""

    def __init__(self, limit: int = names.MAX_METRIC_USERS) -> None:
        self.limit = limit
        self._named: set[str] = set()

    def label(self, user: str) -> str:
        named = self._named
        if user in named:
            return user
        if len(named) < self.limit:
            named.add(user)
            return user
        return names.OTHER_USER


Upstreams = Callable[[], Iterable[tuple[str, bool, int]]]
"""Each upstream's key, whether its last `/health` said ready, and the gate's requests in flight there."""


class UpstreamCollector(Collector):
    """Each upstream's health and in-flight count, read from the pool when scraped, never per request."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(names.UPSTREAM_UP, "1 when the upstream's last /health said ready", labels=["upstream"])
        flight = GaugeMetricFamily(names.UPSTREAM_IN_FLIGHT, "The gate's requests in flight at the upstream",
                                   labels=["upstream"])
        for key, ready, in_flight in self.upstreams():
            up.add_metric([key], 1.0 if ready else 0.0)
            flight.add_metric([key], float(in_flight))
        return [up, flight]


class GateMetrics:
    """The gate's registry and what the connections call; `render` is one scrape's exposition."""

    def __init__(self, *, per_user: bool = False, lane_prefix: str = LANE_PREFIX) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._requests = Counter(names.REQUESTS, "Lane requests answered", ["route", "lane", "status"],
                                 registry=registry)
        self._refusals = Counter(names.REFUSALS, "The gate's refusals", ["code"], registry=registry)
        token_labels = ["model", "user"] if per_user else ["model"]
        self._prompt = Counter(names.PROMPT_TOKENS, "Prompt tokens llama-server reported", token_labels,
                               registry=registry)
        self._completion = Counter(names.COMPLETION_TOKENS, "Completion tokens llama-server reported",
                                   token_labels, registry=registry)
        self._ttfb = Histogram(names.TIME_TO_FIRST_BYTE, "From a lane request's head to its answer's first body byte",
                               ["route", "lane"], buckets=TTFB_BUCKETS, registry=registry)
        self._duration = Histogram(names.STREAM_DURATION, "From a lane request's head to its answer's end",
                                   ["route", "lane"], buckets=DURATION_BUCKETS, registry=registry)
        self._in_flight = Gauge(names.STREAMS_IN_FLIGHT, "Lane answers being relayed now", ["lane"],
                                registry=registry)
        self._loads = Counter(names.MODEL_LOADS, "Model loads a router started for this gate's requests", ["model"],
                              registry=registry)
        self.broker_up = Gauge(names.BROKER_UP, "1 when the broker's metrics were read for this scrape",
                               registry=registry)
        self.users = UserLabels() if per_user else None
        self._routes = {(r.method.encode(), (lane_prefix + r.path).encode()): r.name for r in LANE_ROUTES}
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._tokens: dict[tuple[str, ...], tuple[Counter, Counter]] = {}
        """Each (model[, user]) label set's two counters: bounded by the models served and `UserLabels`."""
        self._timed = {(route, lane): (self._ttfb.labels(route, lane), self._duration.labels(route, lane))
                       for route in [*sorted({r.name for r in LANE_ROUTES}), OTHER_ROUTE] for lane in LANES}
        self._flying = dict.fromkeys(LANES, 0)
        """Lane answers being relayed now: read when scraped (`set_function`), so a request's start and end
        each cost a dict update, not a locked gauge change."""
        for lane in LANES:
            self._in_flight.labels(lane).set_function(functools.partial(self._flying.__getitem__, lane))

    def watch_upstreams(self, upstreams: Upstreams) -> None:
        """Read the upstreams' health at each scrape."""
        self.registry.register(UpstreamCollector(upstreams))

    def route_of(self, method: bytes, target: bytes) -> str:
        """The lane route a request's method and target name (its query aside), or `OTHER_ROUTE`."""
        return self._routes.get((method, target.partition(b"?")[0]), OTHER_ROUTE)

    def answered(self, route: str, lane: str, status: int) -> None:
        key = (route, lane, status)
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = self._requests.labels(route, lane, str(status))
        child.inc()

    def refused(self, code: str) -> None:
        self._refusals.labels(code).inc()

    def first_byte(self, route: str, lane: str, seconds: float) -> None:
        self._timed[route, lane][0].observe(seconds)

    def stream_began(self, lane: str) -> None:
        self._flying[lane] += 1

    def stream_ended(self, route: str, lane: str, seconds: float) -> None:
        self._flying[lane] -= 1
        self._timed[route, lane][1].observe(seconds)

    def tokens(self, model: str, user: str, prompt: int, completion: int) -> None:
        """A stream's usage, as llama-server reported it in its last event."""
        labels = (model,) if self.users is None else (model, self.users.label(user))
        children = self._tokens.get(labels)
        if children is None:
            children = self._tokens[labels] = (self._prompt.labels(*labels), self._completion.labels(*labels))
        if prompt > 0:
            children[0].inc(prompt)
        if completion > 0:
            children[1].inc(completion)

    def loaded(self, model: str) -> None:
        self._loads.labels(model).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class MetricsServing:
    """How this gate serves `/metrics`: the token a scrape must carry (None: every scrape is refused),
    whether tokens are counted per user, and `--metrics-port`'s listening socket if asked."""

    token: str | None = None
    per_user: bool = False
    sock: socket.socket | None = None


class BrokerExposition:
    """The broker's exposition, read over its control socket for each scrape and appended as it is."""

    def __init__(self, control_socket: str) -> None:
        self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=control_socket),
                                         base_url="http://broker", timeout=BROKER_TIMEOUT)

    async def fetch(self) -> bytes | None:
        """The broker's metrics, or None when it cannot say now (down, restarting, or oversized)."""
        try:
            answer = await self._client.get(METRICS_PATH)
        except httpx.HTTPError:
            return None
        body = answer.content
        if answer.status_code != 200 or len(body) > MAX_BROKER_BYTES:
            return None
        return body if body.endswith(b"\n") or not body else body + b"\n"

    async def aclose(self) -> None:
        await self._client.aclose()
