"""The names the Prometheus metrics share between the parent, the gate, the broker, the docs and the dashboard.

The gate serves `/metrics` (its own registry, then the broker's exposition fetched over the control
socket, appended); a scrape needs the metrics token as `Authorization: Bearer`, compared in constant
time, and without one configured `/metrics` is refused, never open. The token is not the access
token: a monitoring system that holds it can read counts, never log in or stream.

Pure: every name is spelt once here; `docs/metrics.md` lists them with their labels, and
`docs/grafana-llama-direct.json` queries only these (a test holds it to the exposition).
"""

from __future__ import annotations

import hmac

METRICS_PATH = "/metrics"
"""On the gate's public port (and app port, two-port mode), on `--metrics-port`, and on the broker's
control socket (the broker's own metrics, which only the gate reads)."""
METRICS_TOKEN_ENV = "LLAMA_DIRECT_METRICS_TOKEN"
"""The metrics token: set by the operator (it then wins over the file), and the parent's hand-over to
the gate; the broker never gets it."""
METRICS_TOKEN_FILE = "metrics-token"
"""In the data dir (0600), written at the first start when the environment names none."""
METRICS_PER_USER_ENV = "LLAMA_DIRECT_METRICS_PER_USER"
"""`1` with `serve --metrics-per-user`: the parent tells the gate, as it tells the children its log choices."""
METRICS_FD_ENV = "LLAMA_DIRECT_METRICS_FD"
"""The parent's hand-over of `--metrics-port`'s listening socket to the gate, by fd number."""
MAX_METRIC_USERS = 100
"""With `--metrics-per-user`, how many users get a label of their own; every later one is `OTHER_USER`,
so a scrape's size stays bounded however many users there are."""
OTHER_USER = "other"

PREFIX = "llama_direct_"
# The gate's metrics (names without the `_total`/`_bucket` suffixes the exposition adds).
REQUESTS = PREFIX + "requests"
"""Counter: lane requests answered, by `route` (a lane route's name, `other` off the registry), `lane`
(`direct` on a public port, `baseline` from the broker) and `status` (the HTTP status sent; 499: the
client left before any answer)."""
REFUSALS = PREFIX + "refusals"
"""Counter: the gate's refusals, by `code` (the refusal catalogue's)."""
PROMPT_TOKENS = PREFIX + "prompt_tokens"
COMPLETION_TOKENS = PREFIX + "completion_tokens"
"""Counters: tokens as llama-server reported them at each stream's end, by `model` (and `user`, the
grant's `sub`, only with `--metrics-per-user`)."""
TIME_TO_FIRST_BYTE = PREFIX + "time_to_first_byte_seconds"
"""Histogram: from a lane request's head to the first byte of its answer's body, by `route` and `lane`."""
STREAM_DURATION = PREFIX + "stream_duration_seconds"
"""Histogram: from a lane request's head to the end of its answer, by `route` and `lane`."""
STREAMS_IN_FLIGHT = PREFIX + "streams_in_flight"
"""Gauge: lane answers being relayed now, by `lane`."""
MODEL_LOADS = PREFIX + "model_loads"
"""Counter: model loads a router started for this gate's requests, by `model`."""
UPSTREAM_UP = PREFIX + "upstream_up"
"""Gauge: 1 when an upstream's last `/health` said ready, by `upstream` (its key, a digest of its address)."""
UPSTREAM_IN_FLIGHT = PREFIX + "upstream_in_flight"
"""Gauge: the gate's requests in flight at each upstream (a pool of several), by `upstream`."""
BROKER_UP = PREFIX + "broker_metrics_up"
"""Gauge: 1 when the broker's metrics were read for this scrape."""
# The broker's metrics (its own registry, appended to the gate's exposition).
BROKER_REFUSALS = PREFIX + "broker_refusals"
"""Counter: the broker's refusals (negotiation, login, baseline, budgets), by `code`."""


def metrics_token_matches(authorization: bytes | None, token: str | None) -> bool:
    """Whether an `Authorization` header value is `Bearer <token>`: False without a token configured,
    and the comparison takes the same time wherever the bytes differ."""
    if token is None or authorization is None:
        return False
    scheme, _, given = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode())
