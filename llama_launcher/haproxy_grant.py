"""The grant's claims as HAProxy 2.6 rules (pure): one function per field that `GRANT_FIELDS` declares.

HAProxy in the gate's place must enforce every claim of a grant, or a grant could do more there than
at the Python gate. So each field's declaration in `llama_direct.tokens.GRANT_FIELDS` names its rule
here, and `grant_rules` refuses to render (ValueError) when a declared field has none: a claim added
to the contract cannot be silently ignored by a rendered config. Each rule takes the lane routes the
config serves (`checked_routes`) and returns its `http-request` lines, which the lane backend places
in order (`haproxy_config._lane_backend`). The token itself (signature, `aud`, `iss`, times, scope)
is checked before any of these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llama_direct.lanes import LANE_PREFIX, LANE_ROUTES, ROUTES, LaneRoute
from llama_direct.tokens import GRANT_FIELDS

Rule = Callable[[Sequence[LaneRoute]], list[str]]

def checked_routes(names: Sequence[str] = ()) -> tuple[LaneRoute, ...]:
    """The lane routes a rendered config serves, from the registry: those named, or when none is, every
    route HAProxy can check. A route whose entry says HAProxy cannot check it (`LaneRoute.unproxied`)
    is refused here, so no config lets its grants through unchecked; a route left out is answered 404."""
    if not names:
        return tuple(route for route in LANE_ROUTES if not route.unproxied)
    chosen: list[LaneRoute] = []
    for name in dict.fromkeys(names):
        route = ROUTES.get(name)
        if route is None:
            raise ValueError(f"{name!r} is not a lane route; the routes are {', '.join(ROUTES)}")
        if route.unproxied:
            raise ValueError(f"HAProxy cannot check the {name!r} route ({route.unproxied}); serve it with the "
                             "Python gate (llama-direct serve)")
        chosen.append(route)
    return tuple(chosen)


def length_fields(routes: Sequence[LaneRoute]) -> tuple[str, ...]:
    """Every length field of every served route: each is checked on every request, which is stricter
    than the route's own list and never wrong (a cap is a cap)."""
    return tuple(dict.fromkeys(name for route in routes for name in route.length_fields))


def budget_fields(routes: Sequence[LaneRoute]) -> tuple[str, ...]:
    """Every nested field held to the cap (dotted paths), checked on every request as the length fields are."""
    return tuple(dict.fromkeys(path for route in routes for path in route.budget_fields))


def integer_keys(routes: Sequence[LaneRoute]) -> tuple[str, ...]:
    """The keys whose values HAProxy reads as integers: each length field, and each budget's own key."""
    return tuple(dict.fromkeys((*length_fields(routes), *(path.rpartition(".")[2] for path in budget_fields(routes)))))


def grant_rules(routes: Sequence[LaneRoute]) -> dict[str, list[str]]:
    """Each declared grant field's lines; a field with no rule here is a config HAProxy cannot render."""
    rules: dict[str, list[str]] = {}
    for field in GRANT_FIELDS:
        module, _, name = field.haproxy.partition(":")
        rule: Rule | None = globals().get(name) if module == __name__ else None
        if rule is None:
            raise ValueError(f"HAProxy cannot enforce the grant's {field.name!r} claim; it renders no config "
                             "that would let such grants through")
        rules[field.name] = rule(routes)
    return rules


def claim(var: str, path: str, kind: str = "") -> str:
    """Read one claim of the (already verified) token into `txn.<var>`."""
    output = f",'{kind}'" if kind else ""
    return f"    http-request set-var(txn.{var}) var(txn.bearer),jwt_payload_query('{path}'{output})"


def routes_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """The grant's first route must be the request's: the broker grants one route a token."""
    lines = [claim("route_method", "$.grant.routes[0][0]"), claim("route_path", "$.grant.routes[0][1]")]
    for route in routes:
        this = f"{{ path {LANE_PREFIX}{route.path} }} {{ method {route.method} }}"
        lines += [f"    http-request deny deny_status 403 if {this} !{{ var(txn.route_method) -m str {route.method} }}",
                  f"    http-request deny deny_status 403 if {this} !{{ var(txn.route_path) -m str {route.path} }}"]
    return lines


def model_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """The body's `model` must be the grant's; HAProxy cannot add a missing one, so it is required."""
    return [
        claim("grant_model", "$.grant.model"),
        "    http-request set-var(txn.body_model) req.body,json_query('$.model')",
        "    http-request deny deny_status 400 unless { var(txn.body_model) -m found }",
        "    http-request deny deny_status 403 unless { var(txn.body_model),strcmp(txn.grant_model) -m int eq 0 }",
    ]


def max_tokens_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """Each length field at most the cap and at least 1, and each budget at most the cap; a generating
    route's own cap field is required, since HAProxy cannot add it. That each is a plain integer
    literal is a body rule (`haproxy_body`)."""
    lines = [claim("cap", "$.grant.max_tokens", "int")]
    for route in routes:
        if route.length_cap:
            lines.append(f"    http-request deny deny_status 400 if {{ path {LANE_PREFIX}{route.path} }} "
                         f"!{{ req.body,json_query('$.{route.length_cap}','int') -m found }}")
    for field in length_fields(routes):
        lines += [
            f"    http-request set-var(txn.len_{field}) req.body,json_query('$.{field}','int')",
            f"    http-request deny deny_status 400 if {{ var(txn.len_{field}),sub(txn.cap) -m int gt 0 }}",
            f"    http-request deny deny_status 400 if {{ var(txn.len_{field}) -m int lt 1 }}",
        ]
    for path in budget_fields(routes):
        var = "budget_" + path.replace(".", "_")
        lines += [
            f"    http-request set-var(txn.{var}) req.body,json_query('$.{path}','int')",
            f"    http-request deny deny_status 400 if {{ var(txn.{var}),sub(txn.cap) -m int gt 0 }}",
        ]
    return lines


def origin_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """`Origin` exactly the grant's, or absent when the grant names none."""
    return _claimed_header_rules("origin", "$.grant.origin", "origin")


def conversation_id_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """`X-Conversation-Id` exactly the grant's, or absent when the grant names none: llama-server
    replaces a live stream of the same id."""
    return _claimed_header_rules("conversation", "$.grant.conversation_id", "x-conversation-id")


def _claimed_header_rules(var: str, path: str, header: str) -> list[str]:
    """A header that a grant may pin: sent exactly as the claim at `path` says, or absent when the grant
    names none (whether present or not, the one check for `Origin` and `X-Conversation-Id`)."""
    named, sent = f"{{ var(txn.{var}) -m found }}", f"{{ req.hdr({header}) -m found }}"
    return [
        claim(var, path),
        f"    http-request deny deny_status 403 if !{named} {sent}",
        f"    http-request deny deny_status 403 if {named} !{sent}",
        f"    http-request deny deny_status 403 if {named} !{{ req.hdr({header}),strcmp(txn.{var}) -m int eq 0 }}",
    ]


def autoload_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """A grant that may not load its model sends `?autoload=false`: llama-server's router then answers
    400 "model is not loaded" instead of loading it (a single-model llama-server ignores the query).
    The client's own query was refused before, so this is the only one."""
    return [
        claim("autoload", "$.grant.autoload"),
        "    http-request set-query autoload=false if { var(txn.autoload) -m found } !{ var(txn.autoload) -m bool }",
    ]


def uses_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """At most `uses` requests per `jti` (1 when absent), counted in a stick table: the last check, so
    a refused request spends nothing."""
    return [
        claim("jti", "$.jti"),
        "    http-request deny deny_status 401 unless { var(txn.jti) -m found }",
        claim("uses", "$.grant.uses", "int"),
        "    http-request set-var(txn.uses) int(1) unless { var(txn.uses) -m found }",
        "    http-request track-sc0 var(txn.jti) table jti_uses",
        "    http-request deny deny_status 401 if { sc0_inc_gpc0,sub(txn.uses) -m int gt 0 }",
    ]


def system_prompt_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """A grant that pins a system prompt is refused: HAProxy cannot put the prompt first, nor read every
    text field of a body for the model's special tokens (`llama_launcher.gate.pinned`), so such grants
    are served by the Python gate only (docs/fleet.md)."""
    return [
        claim("system_prompt", "$.grant.system_prompt"),
        "    http-request deny deny_status 403 if { var(txn.system_prompt) -m found }",
    ]


def streams_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """A grant that carries its user's own stream limit is refused: HAProxy counts no streams per user
    (a stream outlives its connection, and a resume adopts it), so such users are served by the Python
    gate only (docs/users.md)."""
    return [
        claim("streams", "$.grant.streams"),
        "    http-request deny deny_status 403 if { var(txn.streams) -m found }",
    ]
