"""Routing by model in the HAProxy configs (pure): which gate or llama-server serves which model.

A GPU team's fleet: each machine runs `serve` in front of only its own llama-server, so the
llama-server's key never leaves the machine it protects, and one HAProxy at the edge sends each request
to the machines that serve its model. `--gate HOST:PORT=alpha,beta` names a machine's models; a gate
given without a list serves any. What carries the model:

- a lane request (`/direct/...`): its token's `grant.model`. HAProxy at the edge reads the claim
  without verifying the signature: the gate it reaches verifies everything, so a forged claim only
  chooses which gate refuses it.
- the negotiation (`POST /direct-stream`, or `GET` with a query) and the baseline
  (`POST /v1/chat/completions`): the `model` of their JSON body (the page and the SDK send it there).
- anything else (the page, login, `GET /v1/models`, the JWKS, health) and a model no gate lists: every
  gate, whose broker then answers as usual (a model its gate does not serve is `unknown_model`).

Resume and cancel must reach the machine that holds the conversation: its broker knows who owns it and
its llama-server holds the stream. A conversation id is born in a negotiation's answer (the broker
sends it as `X-Conversation-Id` too), so HAProxy stores id -> gate from that header in one stick table
that every backend shares (a gate has the same server `id` in each), and matches it on every later
request that names the id: a lane request's `grant.conversation_id` (its chat too, so it streams from
the machine that negotiated it), a negotiation's `resume` or `cancel`. Consistent hashing could not do
this: the first negotiation has no id to hash, and its gate is chosen by load. The answer's body is
not read: HAProxy 2.6 runs stick store rules before it waits for a response body, so a body that
arrives after the head would be missed. A gate that is down loses its conversations either way (its
llama-server held the stream).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from llama_direct.lanes import LANE_PREFIX, LANE_ROUTES, NEGOTIATION_PATH

MODEL_NAME = re.compile(r"[A-Za-z0-9_.:/@+-]{1,128}")
"""Model names written into the config; nothing else is accepted, so nothing needs escaping."""
CONVERSATION_TABLE_EXPIRE = 3600
"""As long as a broker remembers a conversation (`CONVERSATION_TTL_SECONDS`)."""
BODY_WAIT = "10s"
BASELINE_PATHS = " ".join(dict.fromkeys(route.path for route in LANE_ROUTES if route.body is not None))
"""The broker's baseline of each lane route that takes a body: the same path off the lane."""
PEERS_SECTION = "lane_peers"
"""The `peers` section that shares a stick table between HAProxies (`--peer`)."""


@dataclass(frozen=True)
class Target:
    """A gate or a llama-server, and the models it serves (none listed: any)."""

    address: str
    models: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entry: str) -> Target:
        """`HOST:PORT` or `HOST:PORT=MODEL[,MODEL...]`; the address is checked by the caller."""
        address, sep, names = entry.partition("=")
        if not sep:
            return cls(address)
        models = tuple(names.split(","))
        for name in models:
            if not MODEL_NAME.fullmatch(name):
                raise ValueError(f"model {name!r} must be 1 to 128 letters, digits or _.:/@+-")
        if len(set(models)) != len(models):
            raise ValueError(f"{entry!r} names a model twice")
        return cls(address, models)


def model_routes(targets: Sequence[Target]) -> list[tuple[str, list[int]]]:
    """Each listed model, in order of first mention, with the 1-based numbers of the targets that serve
    it (those listing it, and those serving any)."""
    names: list[str] = []
    for target in targets:
        names += [name for name in target.models if name not in names]
    return [(name, [i for i, t in enumerate(targets, 1) if not t.models or name in t.models]) for name in names]


def model_acl(var: str, name: str) -> str:
    return f"{{ var({var}) -m str {name} }}"


def edge_frontend(head: Sequence[str], targets: Sequence[Target]) -> str:
    """The edge's frontend: every model request to its model's backend, the rest to all gates."""
    routes = model_routes(targets)
    lines = ["frontend public", *head]
    if routes:
        post, get = "METH_POST negotiation", "METH_GET negotiation"
        lines += [
            f"    acl on_lane path_beg {LANE_PREFIX}/",
            f"    acl negotiation path {NEGOTIATION_PATH}",
            f"    acl baseline path {BASELINE_PATHS}",
            # Read, not verified: the gate that gets the request verifies the token (see the module doc).
            "    http-request set-var(txn.model) http_auth_bearer,jwt_payload_query('$.grant.model') if on_lane",
            "    http-request set-var(txn.conversation) "
            "http_auth_bearer,jwt_payload_query('$.grant.conversation_id') if on_lane",
            # Only these small bodies are waited for; a lane body streams through untouched.
            f"    http-request wait-for-body time {BODY_WAIT} if {post} || METH_POST baseline",
            f"    http-request set-var(txn.model) req.body,json_query('$.model') if {post} || METH_POST baseline",
            f"    http-request set-var(txn.conversation) req.body,json_query('$.resume') if {post}",
            f"    http-request set-var(txn.conversation) req.body,json_query('$.cancel') if {post} "
            "!{ var(txn.conversation) -m found }",
            f"    http-request set-var(txn.model) url_param(model) if {get}",
            f"    http-request set-var(txn.conversation) url_param(resume) if {get}",
            f"    http-request set-var(txn.conversation) url_param(cancel) if {get} "
            "!{ var(txn.conversation) -m found }",
            "    http-request set-var(txn.negotiation) bool(1) if negotiation",
        ]
        lines += [f"    use_backend model{k} if {model_acl('txn.model', name)}"
                  for k, (name, _) in enumerate(routes, 1)]
    lines.append("    default_backend gates")
    return "\n".join(lines) + "\n"


def edge_backends(targets: Sequence[Target], *, peers: bool = False) -> list[str]:
    """`gates` (every gate, health-checked) and, with model lists, a backend per model whose servers
    track the checks in `gates`, plus the shared conversation table (shared with the other HAProxies
    too when `peers`: their `peers` section replicates it, asynchronously)."""
    routes = model_routes(targets)
    sticky = _conversation_rules() if routes else []
    gates = ["backend gates", "    balance leastconn",
             # A gate relays this to its broker: 200 means the gate and the broker both answer.
             "    option httpchk GET /.well-known/jwks.json", *sticky]
    gates += [f"    server gate{i} {t.address}{_id(i, routes)} check inter 2s fall 2 rise 2"
              for i, t in enumerate(targets, 1)]
    sections = ["\n".join(gates) + "\n"]
    for k, (name, numbers) in enumerate(routes, 1):
        lines = [f"backend model{k}", f"    # {name}", "    balance leastconn", *sticky]
        lines += [f"    server gate{i} {targets[i - 1].address} id {i} track gates/gate{i}" for i in numbers]
        sections.append("\n".join(lines) + "\n")
    if routes:
        shared = f" peers {PEERS_SECTION}" if peers else ""
        sections.append(f"backend conversations\n    stick-table type string len 64 size 100k "
                        f"expire {CONVERSATION_TABLE_EXPIRE}s{shared}\n")
    return sections


def _id(number: int, routes: list[tuple[str, list[int]]]) -> str:
    """A fixed server id, so that the shared conversation table means the same gate in every backend."""
    return f" id {number}" if routes else ""


def _conversation_rules() -> list[str]:
    return [
        "    stick match var(txn.conversation) table conversations",
        "    stick store-response res.hdr(x-conversation-id) table conversations "
        "if { var(txn.negotiation) -m bool }",
    ]
