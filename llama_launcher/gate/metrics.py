"""The gate's Prometheus metrics: what it sees of every lane request, in a registry of its own.

The gate is the one process that sees every direct and baseline request, its status, its first
byte and its end, the loads it causes and each upstream's health, so it counts them, and it serves
`/metrics` (`llama_direct.metrics`), the broker's own exposition appended. On the hot path a request
costs a few dict and list additions (`GateMetrics`), written out as Prometheus families only when
scraped; no chunk of a stream is looked at for metrics (the first byte's time is noted once).
Upstream health is read only when scraped (`UpstreamCollector`).

Nothing here holds a prompt, a reply or a secret: labels are route names, lanes, statuses, refusal
codes, model names, upstream keys (digests) and, with `--metrics-per-user`, grant subjects (stable
random ids, never names or keys), at most `MAX_METRIC_USERS` of them.
"""

from __future__ import annotations

import bisect
import itertools
import math
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

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


class Timings:
    """One (route, lane)'s histogram as plain numbers: each bucket's own count (not cumulative, `+Inf`
    last), the observations' sum, and when it was made (its `_created` sample)."""

    __slots__ = ("counts", "created", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0
        self.created = time.time()


class Tally:
    """One counter family as plain numbers: each label set's count and when it was first counted."""

    __slots__ = ("counts", "created")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, ...], int] = {}
        self.created: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], amount: int) -> None:
        counts = self.counts
        if labels in counts:
            counts[labels] += amount
        else:
            counts[labels] = amount
            self.created[labels] = time.time()

    def family(self, name: str, documentation: str, labels: Sequence[str]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=labels)
        for values, count in self.counts.items():
            family.add_metric(values, float(count), created=self.created[values])
        return family


def histogram(name: str, documentation: str, bounds: Sequence[float],
              timings: dict[tuple[str, str], Timings]) -> HistogramMetricFamily:
    """The family `prometheus_client.Histogram` would write for these timings: cumulative buckets,
    count, sum, created."""
    family = HistogramMetricFamily(name, documentation, labels=["route", "lane"])
    edges = [floatToGoString(bound) for bound in bounds]
    for (route, lane), timing in timings.items():
        cumulative = itertools.accumulate(float(count) for count in timing.counts)
        family.add_metric([route, lane], list(zip(edges, cumulative, strict=True)), timing.total)
        family.samples.append(Sample(name + "_created", {"route": route, "lane": lane}, timing.created, None))
    return family


class GateMetrics(Collector):
    """What the connections call, and the collector that writes it out; `render` is one scrape's exposition.

    A request is counted in plain dicts and lists, not in `prometheus_client`'s metrics, whose every
    increment takes a lock and checks its labels: the gate serves every lane request and every scrape
    on its one loop thread (`GateLoop`), so no count is shared between threads. `collect` turns the
    counts into the same families (names, help, types, labels, buckets, `_created`) those metrics would
    write.
    """

    def __init__(self, *, per_user: bool = False, lane_prefix: str = LANE_PREFIX) -> None:
        self.registry = CollectorRegistry()
        self.token_labels = ["model", "user"] if per_user else ["model"]
        self._requests = Tally()
        self._refusals = Tally()
        self._prompt = Tally()
        self._completion = Tally()
        self._loads = Tally()
        self._ttfb_bounds = (*TTFB_BUCKETS, math.inf)
        self._duration_bounds = (*DURATION_BUCKETS, math.inf)
        keys = [(route, lane) for route in [*sorted({r.name for r in LANE_ROUTES}), OTHER_ROUTE] for lane in LANES]
        self._ttfb = {key: Timings(len(self._ttfb_bounds)) for key in keys}
        self._duration = {key: Timings(len(self._duration_bounds)) for key in keys}
        self._flying = dict.fromkeys(LANES, 0)
        """Lane answers being relayed now."""
        self.registry.register(self)
        self.broker_up = Gauge(names.BROKER_UP, "1 when the broker's metrics were read for this scrape",
                               registry=self.registry)
        self.users = UserLabels() if per_user else None
        self._routes = {(r.method.encode(), (lane_prefix + r.path).encode()): r.name for r in LANE_ROUTES}

    def collect(self) -> Iterable[Metric]:
        yield self._requests.family(names.REQUESTS, "Lane requests answered", ["route", "lane", "status"])
        yield self._refusals.family(names.REFUSALS, "The gate's refusals", ["code"])
        yield self._prompt.family(names.PROMPT_TOKENS, "Prompt tokens llama-server reported", self.token_labels)
        yield self._completion.family(names.COMPLETION_TOKENS, "Completion tokens llama-server reported",
                                      self.token_labels)
        yield histogram(names.TIME_TO_FIRST_BYTE, "From a lane request's head to its answer's first body byte",
                        self._ttfb_bounds, self._ttfb)
        yield histogram(names.STREAM_DURATION, "From a lane request's head to its answer's end",
                        self._duration_bounds, self._duration)
        flying = GaugeMetricFamily(names.STREAMS_IN_FLIGHT, "Lane answers being relayed now", labels=["lane"])
        for lane, count in self._flying.items():
            flying.add_metric([lane], float(count))
        yield flying
        yield self._loads.family(names.MODEL_LOADS, "Model loads a router started for this gate's requests",
                                 ["model"])

    def watch_upstreams(self, upstreams: Upstreams) -> None:
        """Read the upstreams' health at each scrape."""
        self.registry.register(UpstreamCollector(upstreams))

    def route_of(self, method: bytes, target: bytes) -> str:
        """The lane route a request's method and target name (its query aside), or `OTHER_ROUTE`."""
        return self._routes.get((method, target.partition(b"?")[0]), OTHER_ROUTE)

    def answered(self, route: str, lane: str, status: int) -> None:
        self._requests.add((route, lane, str(status)), 1)

    def refused(self, code: str) -> None:
        self._refusals.add((code,), 1)

    def first_byte(self, route: str, lane: str, seconds: float) -> None:
        timing = self._ttfb[route, lane]
        timing.counts[bisect.bisect_left(self._ttfb_bounds, seconds)] += 1
        timing.total += seconds

    def stream_began(self, lane: str) -> None:
        self._flying[lane] += 1

    def stream_ended(self, route: str, lane: str, seconds: float) -> None:
        self._flying[lane] -= 1
        timing = self._duration[route, lane]
        timing.counts[bisect.bisect_left(self._duration_bounds, seconds)] += 1
        timing.total += seconds

    def tokens(self, model: str, user: str, prompt: int, completion: int) -> None:
        """A stream's usage, as llama-server reported it in its last event."""
        labels = (model,) if self.users is None else (model, self.users.label(user))
        self._prompt.add(labels, max(prompt, 0))  # both counted from the label set's first report, as zero
        self._completion.add(labels, max(completion, 0))

    def loaded(self, model: str) -> None:
        self._loads.add((model,), 1)

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
