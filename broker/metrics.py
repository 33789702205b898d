"""The broker's Prometheus metrics: what only the broker sees, in a registry of its own.

The gate serves `/metrics` and appends this exposition, read over the control socket (which only
processes that can reach the 0700 runtime dir can ask). The broker counts its refusals by code: a
negotiation past a budget or a rate, a login refused, a baseline body refused. Labels are refusal
codes from the catalogue, never a user, a path or a secret.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from llama_direct.metrics import BROKER_REFUSALS


class BrokerMetrics:
    """One process's counters; `render` is their exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._refusals = Counter(BROKER_REFUSALS, "The broker's refusals", ["code"], registry=self.registry)

    def refused(self, code: str) -> None:
        self._refusals.labels(code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = BrokerMetrics()
"""The process's own: every app and mounted router of one process counts into it (`responses.refusal_response`)."""
