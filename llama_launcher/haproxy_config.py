"""`llama-direct haproxy-config`: a working HAProxy 2.6 configuration, rendered from a few settings.

Pure: `render(plan)` returns the text; the CLI writes it. Two shapes:

- **edge** (`--gate`): HAProxy in front of several `serve` stacks. TLS optional, `balance leastconn`,
  responses never buffered (SSE goes out as llama-server writes it), a health check per gate, and
  `X-Forwarded-For` / `X-Forwarded-Proto` set by HAProxy after deleting any the client sent. The gates
  trust those headers only from HAProxy's address (`--trusted-proxy` on `serve`). A gate given as
  `HOST:PORT=MODEL[,MODEL...]` serves only those models, and requests are routed by model
  (`llama_launcher.haproxy_edge`), so that each machine keeps its llama-server's key to itself.
- **gate** (`--upstream`): HAProxy stands in the Python gate's place in front of llama-servers. ES256
  only (HAProxy 2.6 cannot verify EdDSA or pull a JWKS): `jwt_verify` with the broker's public key
  files, `aud`, `iss`, `exp`, `nbf`, `scope`, method and path, the grant's route, `model` and every
  length field read from the body against `grant.max_tokens`, Origin and `X-Conversation-Id` against
  the grant, single use through a `jti` stick table (shared by `peers` when given). llama-server's key is
  `${LLAMA_API_KEY}` from HAProxy's own environment, never written here. Everything off the lane goes to
  `--app` (a `serve` stack's public port: page, login, negotiation, the fallback path, health). An
  upstream given as `HOST:PORT=MODEL[,MODEL...]` gets only the grants for those models.

What this cannot do that the Python gate does is in docs/fleet.md ("What HAProxy cannot do that the
Python gate does").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llama_direct.lanes import LANE_PREFIX, LaneRoute
from llama_direct.tokens import LEEWAY_SECONDS, MAX_TTL_SECONDS
from llama_launcher.haproxy_body import body_rules
from llama_launcher.haproxy_grant import checked_routes, claim, grant_rules, integer_keys
from llama_launcher.haproxy_routing import (
    PEERS_SECTION,
    Target,
    edge_backends,
    edge_frontend,
    model_acl,
    model_routes,
)

JTI_TABLE_EXPIRE = MAX_TTL_SECONDS + LEEWAY_SECONDS + 5
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
_PATH = re.compile(r"/[^\s\"'\\]*")
_UNIX = re.compile(r"unix@/[^\s\"'\\]*")
"""An upstream may also be a unix socket (`unix@/path`), as `serve` runs llama-server."""


@dataclass(frozen=True)
class Peer:
    name: str
    address: str


@dataclass(frozen=True)
class HaproxyPlan:
    """What the config is rendered from; `check()` refuses anything that would need escaping."""

    bind: str
    gates: tuple[str, ...] = ()
    """`HOST:PORT`, or `HOST:PORT=MODEL[,MODEL...]` for a gate that serves only those."""
    upstreams: tuple[str, ...] = ()
    """`HOST:PORT` or `unix@/path`, each optionally `=MODEL[,MODEL...]`."""
    app: str | None = None
    tls_pem: str | None = None
    public_keys: tuple[str, ...] = ()
    audience: str | None = None
    issuers: tuple[str, ...] = ()
    peers: tuple[Peer, ...] = ()
    local_peer: str | None = None
    routes: tuple[str, ...] = ()
    """In the gate's place: the lane routes, by registry name, that the deployment's brokers grant and
    this config serves; none: every route HAProxy can check. One it cannot check is refused."""
    budgets: bool = False
    """Some user of the deployment has a token budget: settling it needs what each stream used, which
    only the gate reads, so HAProxy cannot take the gate's place."""

    @property
    def gate_mode(self) -> bool:
        return bool(self.upstreams)

    @property
    def targets(self) -> tuple[Target, ...]:
        """The gates (at the edge) or the upstreams (in the gate's place), with their models."""
        return tuple(Target.parse(entry) for entry in (self.upstreams or self.gates))

    def check(self) -> None:
        if bool(self.gates) == bool(self.upstreams):
            raise ValueError("give --gate (HAProxy at the edge) or --upstream (HAProxy in the gate's place), not both")
        gates = [Target.parse(entry).address for entry in self.gates]
        for address in (self.bind, *gates, *([self.app] if self.app else []), *(p.address for p in self.peers)):
            if not _ADDRESS.fullmatch(address):
                raise ValueError(f"{address!r} is not HOST:PORT")
        for address in (Target.parse(entry).address for entry in self.upstreams):
            if not (_ADDRESS.fullmatch(address) or _UNIX.fullmatch(address)):
                raise ValueError(f"{address!r} is not HOST:PORT or unix@/path")
        for path in (*self.public_keys, *([self.tls_pem] if self.tls_pem else [])):
            if not _PATH.fullmatch(path):
                raise ValueError("file paths must be absolute, without spaces or quotes")
        for name in (*self.issuers, *([self.audience] if self.audience else []), *(p.name for p in self.peers),
                     *([self.local_peer] if self.local_peer else [])):
            if not _NAME.fullmatch(name):
                raise ValueError(f"{name!r} must be 1 to 128 letters, digits or _.:-")
        if self.gate_mode and not (self.public_keys and self.audience and self.issuers):
            raise ValueError("in the gate's place HAProxy needs --public-key-file, --audience and --issuer")
        if self.gate_mode and self.budgets:
            raise ValueError("HAProxy cannot take the gate's place here: some users have --tokens-per-day or "
                             "--tokens-per-minute, and only the gate reads what a stream used to settle them "
                             "(clear those limits with llama-direct users set NAME --tokens-per-day none, or "
                             "keep the gate and put HAProxy at its edge with --gate)")
        if self.routes and not self.gate_mode:
            raise ValueError("--route names the lane routes HAProxy serves in the gate's place (--upstream)")
        checked_routes(self.routes)
        if self.peers and self.local_peer not in {p.name for p in self.peers}:
            raise ValueError("--local-peer must name one of the --peer entries")
        if self.peers and not self.gate_mode and not any(t.models for t in self.targets):
            raise ValueError("--peer at the edge shares the conversation table, which only routing by "
                             "model (--gate HOST:PORT=MODEL,...) has")


def render(plan: HaproxyPlan) -> str:
    plan.check()
    parts = [_global(plan), _defaults()]
    if plan.gate_mode:
        if plan.peers:
            parts.append(_peers(plan))
        parts += [*_gate_sections(plan), _jti_table(plan)]
        if plan.app:
            parts.append(_app(plan.app))
    else:
        if plan.peers:
            parts.append(_peers(plan))
        parts += [edge_frontend([_bind(plan), *_forwarded(plan)], plan.targets),
                  *edge_backends(plan.targets, peers=bool(plan.peers))]
    return "\n".join(parts)


def _global(plan: HaproxyPlan) -> str:
    lines = ["# Written by `llama-direct haproxy-config`; HAProxy 2.6.", "global",
             "    log stderr format short local0 notice",
             "    tune.bufsize 65536",
             "    ssl-default-bind-options ssl-min-ver TLSv1.2"]
    if plan.local_peer:
        lines.append(f"    localpeer {plan.local_peer}")
    return "\n".join(lines) + "\n"


def _defaults() -> str:
    return """defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 5s
    timeout client 60s
    timeout http-request 10s
    # A non-streaming chat answers only when the whole generation is done; SSE chunks may pause.
    timeout server 600s
    timeout tunnel 600s
    # No compression and no response buffering: each SSE chunk leaves as soon as it arrives.
    option http-no-delay
"""


def _bind(plan: HaproxyPlan) -> str:
    tls = f" ssl crt {plan.tls_pem} alpn http/1.1" if plan.tls_pem else ""
    return f"    bind {plan.bind}{tls}"


def _forwarded(plan: HaproxyPlan) -> list[str]:
    """The client's address and scheme as HAProxy saw them; what the client claimed is dropped first."""
    proto = "https" if plan.tls_pem else "http"
    return ["    http-request del-header X-Forwarded-For",
            "    http-request del-header X-Forwarded-Proto",
            "    option forwardfor",
            f"    http-request set-header X-Forwarded-Proto {proto}"]


def _app(address: str) -> str:
    # A serve stack's gate relays this to its broker: 200 means the gate and the broker both answer.
    return ("backend app\n    balance leastconn\n    option httpchk GET /.well-known/jwks.json\n"
            f"    server app1 {address} check inter 2s fall 2 rise 2\n")


def _peers(plan: HaproxyPlan) -> str:
    """In the gate's place the `jti` table, at the edge the conversation table, shared by these peers."""
    lines = [f"peers {PEERS_SECTION}"] + [f"    peer {p.name} {p.address}" for p in plan.peers]
    return "\n".join(lines) + "\n"


def _jti_table(plan: HaproxyPlan) -> str:
    peers = f" peers {PEERS_SECTION}" if plan.peers else ""
    return (f"backend jti_uses\n    stick-table type string len 64 size 1m expire {JTI_TABLE_EXPIRE}s"
            f"{peers} store gpc0\n")


def _gate_sections(plan: HaproxyPlan) -> list[str]:
    """The frontend, and the lane backend; with model lists, a lane backend per model (the grant's
    `model`, read in the frontend and verified in the backend, picks it) whose servers track the
    health checks of `llama_servers`, and `lane` for the models no upstream lists."""
    targets = plan.targets
    routes = model_routes(targets)
    frontend = ["frontend public", _bind(plan), *_forwarded(plan), f"    acl on_lane path_beg {LANE_PREFIX}/"]
    if routes:
        # Only chooses the backend; the backend verifies the token before anything reaches llama-server.
        frontend.append("    http-request set-var(txn.lane_model) "
                        "http_auth_bearer,jwt_payload_query('$.grant.model') if on_lane")
        frontend += [f"    use_backend lane{k} if on_lane {model_acl('txn.lane_model', name)}"
                     for k, (name, _) in enumerate(routes, 1)]
    frontend += ["    use_backend lane if on_lane",
                 "    default_backend app" if plan.app else "    http-request deny deny_status 404 unless on_lane"]
    sections = ["\n".join(frontend) + "\n"]
    checked = " check inter 2s fall 2 rise 2"
    if not routes:
        servers = [f"    server llama{i} {t.address}{checked}" for i, t in enumerate(targets, 1)]
        return [*sections, _lane_backend("lane", plan, servers, health_check=True)]
    for k, (name, numbers) in enumerate(routes, 1):
        sections.append(_lane_backend(f"lane{k}", plan, _tracked(targets, numbers), name))
    anyone = [i for i, t in enumerate(targets, 1) if not t.models]
    sections.append(_lane_backend("lane", plan, _tracked(targets, anyone), "models no upstream lists"))
    health = ["backend llama_servers", "    option httpchk GET /health"]
    health += [f"    server llama{i} {t.address}{checked}" for i, t in enumerate(targets, 1)]
    return [*sections, "\n".join(health) + "\n"]


def _tracked(targets: tuple[Target, ...], numbers: list[int]) -> list[str]:
    return [f"    server llama{i} {targets[i - 1].address} track llama_servers/llama{i}" for i in numbers]


def _lane_backend(name: str, plan: HaproxyPlan, servers: list[str], comment: str = "", *,
                  health_check: bool = False) -> str:
    """Every check of the lane, then the servers; with none, a grant that passed every check is
    refused (404) before its single use is spent. The grant's claims are checked by their rules
    (`haproxy_grant`), each declared field's in turn, the single use last."""
    lane = LANE_PREFIX
    routes = checked_routes(plan.routes)
    rules = grant_rules(routes)
    keys = [f'    http-request set-var(txn.signed) int(1) if {{ var(txn.bearer),jwt_verify(txn.alg,"{path}") 1 }}'
            for path in plan.public_keys]
    issuers = " ".join(plan.issuers)
    paths = " ".join(dict.fromkeys(f"{lane}{route.path}" for route in routes))
    methods = [f"    http-request deny deny_status 405 if {{ path {lane}{path} }} !{{ method {' '.join(verbs)} }}"
               for path, verbs in _methods_by_path(routes).items()]
    scopes = [f"    http-request deny deny_status 403 if {{ path {lane}{route.path} }} {{ method {route.method} }} "
              f"!{{ var(txn.scope) -m str {route.scope} }}" for route in routes]
    placed = ("routes", "origin", "conversation_id", "model", "max_tokens", "uses")
    others = [line for field, lines in rules.items() if field not in placed for line in lines]
    checks = [
        f"backend {name}",
        *([f"    # {comment}"] if comment else []),
        "    balance leastconn",
        *(["    option httpchk GET /health"] if health_check else []),
        # Method and path: the lane routes HAProxy checks, spelt exactly, with no query.
        f"    http-request deny deny_status 404 unless {{ path {paths} }}",
        "    http-request deny deny_status 400 if { url -m sub ? }",
        *methods,
        # The token: ES256, signed by one of the broker's keys, for this audience and these issuers.
        "    http-request set-var(txn.bearer) http_auth_bearer",
        "    http-request deny deny_status 401 unless { var(txn.bearer) -m found }",
        "    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')",
        "    http-request deny deny_status 401 unless { var(txn.alg) -m str ES256 }",
        *keys,
        "    http-request deny deny_status 401 unless { var(txn.signed) -m found }",
        claim("aud", "$.aud"),
        f"    http-request deny deny_status 401 unless {{ var(txn.aud) -m str {plan.audience} }}",
        claim("iss", "$.iss"),
        f"    http-request deny deny_status 401 unless {{ var(txn.iss) -m str {issuers} }}",
        "    http-request set-var(txn.now) date",
        claim("exp", "$.exp", "int"),
        claim("nbf", "$.nbf", "int"),
        # exp + leeway > now >= nbf - leeway; no negative constant (HAProxy reads "-5" as a range).
        f"    http-request deny deny_status 401 unless "
        f"{{ var(txn.exp),add({LEEWAY_SECONDS}),sub(txn.now) -m int gt 0 }}",
        f"    http-request deny deny_status 401 unless {{ var(txn.nbf),sub(txn.now) -m int le {LEEWAY_SECONDS} }}",
        claim("scope", "$.scope"),
        *scopes,
        *rules["routes"],
        *rules["origin"],
        *rules["conversation_id"],
        # The body: plain JSON of a known length, read whole from the buffer, checked as llama-server
        # would read it (`haproxy_body`).
        *body_rules(routes, read_keys=(*integer_keys(routes), "model"), integers=integer_keys(routes)),
        *rules["model"],
        *rules["max_tokens"],
        *others,
        *([] if servers else ["    http-request deny deny_status 404"]),
        *rules["uses"],
        # What llama-server gets: its own path, its key, none of the client's credentials.
        "    http-request del-header Cookie",
        '    http-request set-header Authorization "Bearer ${LLAMA_API_KEY}"',
        f"    http-request replace-path ^{lane}(/.*) \\1",
        *servers,
    ]
    return "\n".join(checks) + "\n"


def _methods_by_path(routes: tuple[LaneRoute, ...]) -> dict[str, list[str]]:
    by_path: dict[str, list[str]] = {}
    for route in routes:
        by_path.setdefault(route.path, []).append(route.method)
    return by_path
