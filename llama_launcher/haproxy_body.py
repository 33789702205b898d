"""What HAProxy in the gate's place checks in a lane request's body (pure): its `http-request` lines.

HAProxy cannot rebuild a JSON body as the gate's shapers do; it can read one whole from its buffer,
match it with a regular expression and read a top-level scalar with `json_query`. These rules use
only what makes those sound, and each is written for what llama-server 11434 would do with the body:

- a JSON body of a known length within the buffer, no content coding;
- no escaped printable ASCII character (`\\u0074`): with it, a key could be spelt so that neither a
  regex nor `json_query` sees it, while llama-server reads it. Without it, a key is its literal
  text, and `"NAME"\\s*:` matches exactly the keys named NAME (a quote escaped inside a string is
  preceded by a backslash, so text that mentions a key does not match);
- no key HAProxy reads named twice (`json_query` reads the first, llama-server the last);
- every length field a plain positive integer literal: `json_query(...,'int')` reads `1e9` as 1,
  `true` as 1 and `"abc"` as a string, where llama-server reads 1e9, or its default for the others;
- no media by URL (`"url"`, `"image_url"` or `"data"` holding an `http…` or `file:` string): llama-
  server downloads an `http` image itself (`handle_media`), and each format's image ends up there;
- a field the gate refuses on the route (its shaper's table), when it is a scalar at the top level,
  where llama-server reads it: `json_query` finds only scalars, and only where it looks, so a key of
  that name inside a tool's schema is not refused, and neither is one whose value is a list or an
  object (`lora`, `logit_bias`, `input_extra`: docs/fleet.md lists what passes);
- each body format's own rules (`FORMAT_RULES`); a format with none listed is one HAProxy was not
  written for, and no config serving it is rendered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llama_direct.lanes import LANE_PREFIX, BodyFormat, LaneRoute
from llama_launcher.gate import (
    completions_shaping,
    embeddings_shaping,
    messages_shaping,
    rerank_shaping,
    responses_shaping,
)
from llama_launcher.gate.bounds import REFUSED, classified
from llama_launcher.gate.shaping import DENIED_FIELDS

MAX_BODY_BYTES = 60_000
"""HAProxy reads the body from its buffer (`tune.bufsize` 65536 here): a larger one is refused, 413."""
MEDIA_KEYS = ("url", "image_url", "data")
"""The keys llama-server reads a media part's source from (`oaicompat_content_load_media`)."""


def deny(status: int, condition: str) -> str:
    return f"    http-request deny deny_status {status} if {condition}"


def on(route: LaneRoute) -> str:
    """The condition that a request is for `route`."""
    return f"{{ path {LANE_PREFIX}{route.path} }}"


def key(name: str) -> str:
    """A regex for the key `name` anywhere in the body (see the module doc for why it is exact)."""
    return f'"{name}"\\s*:'


def _completions(route: LaneRoute) -> list[str]:
    """One prompt, a string: a list of prompts is one generation each, every one up to the cap.
    `json_query` finds only a scalar, so a list (or an object) is refused."""
    return [deny(400, f"{on(route)} !{{ req.body,json_query('$.prompt') -m found }}"),
            deny(400, f"{on(route)} {{ req.body -m reg '{key('prompt')}[\\s\\S]*{key('prompt')}' }}")]


def _rerank(route: LaneRoute) -> list[str]:
    """`top_n` refused: llama-server resizes its answer to it unchecked, and HAProxy cannot count the
    documents to bound it."""
    return [deny(400, f"{on(route)} {{ req.body -m reg '{key('top_n')}' }}")]


def _none(route: LaneRoute) -> list[str]:
    return []


FORMAT_RULES: dict[BodyFormat, Callable[[LaneRoute], list[str]]] = {
    "chat": _none,
    "chat_count": _none,
    "responses": _none,
    "responses_count": _none,
    "messages": _none,
    "messages_count": _none,
    "completions": _completions,
    "embeddings": _none,
    "rerank": _rerank,
}
"""Each body format HAProxy serves, with its own rules beyond the common ones (and the grant's
`model` and length rules, `haproxy_grant`); what each still passes as sent is in docs/fleet.md."""


REFUSED_FIELDS: dict[BodyFormat, frozenset[str]] = {
    "chat": DENIED_FIELDS,
    "chat_count": DENIED_FIELDS,
    "responses": responses_shaping.REFUSED_FIELDS,
    "responses_count": responses_shaping.REFUSED_FIELDS,
    "messages": messages_shaping.REFUSED_FIELDS,
    "messages_count": messages_shaping.REFUSED_FIELDS,
    "completions": completions_shaping.REFUSED_FIELDS,
    "embeddings": embeddings_shaping.REFUSED_FIELDS,
    "rerank": classified(rerank_shaping.FIELDS, REFUSED),
}
"""What the gate refuses on each body format, from its shapers' tables (written once, there)."""


def refused_rules(routes: Sequence[LaneRoute]) -> list[str]:
    """Each refused field found as a top-level scalar is 400, on the served routes that refuse it (no
    path condition where all of them do)."""
    lines: list[str] = []
    refusing = {route.name: REFUSED_FIELDS[route.body] for route in routes if route.body is not None}
    for name in sorted(frozenset().union(*refusing.values())):
        paths = " ".join(LANE_PREFIX + route.path for route in routes if name in refusing[route.name])
        where = "" if all(name in fields for fields in refusing.values()) else f"{{ path {paths} }} "
        lines.append(deny(400, f"{where}{{ req.body,json_query('$.{name}') -m found }}"))
    return lines


def format_rules(routes: Sequence[LaneRoute]) -> list[str]:
    lines: list[str] = []
    for route in routes:
        if route.body is None or route.body not in FORMAT_RULES:
            raise ValueError(f"HAProxy has no body rules for the {route.name!r} route; it renders no config "
                             "that would serve it")
        lines += FORMAT_RULES[route.body](route)
    return lines


def body_rules(routes: Sequence[LaneRoute], read_keys: Sequence[str], integers: Sequence[str]) -> list[str]:
    """The common rules: `read_keys` are the keys HAProxy reads (each refused twice), `integers` the
    length fields (each a plain positive integer literal wherever it appears)."""
    numbers = "|".join(integers)
    media = "|".join(MEDIA_KEYS)
    return [
        "    option http-buffer-request",
        "    http-request deny deny_status 400 unless { req.hdr(content-type) -m reg -i ^application/json(;.*)?$ }",
        "    http-request deny deny_status 400 if { req.hdr(content-encoding) -m found }",
        "    http-request deny deny_status 400 unless { req.hdr(content-length) -m found }",
        deny(413, f"{{ req.body_size gt {MAX_BODY_BYTES} }}"),
        deny(400, r"{ req.body -m reg '\\u00[2-7][0-9A-Fa-f]' }"),
        *[deny(400, f"{{ req.body -m reg '\"{name}\"[\\s\\S]*\"{name}\"' }}") for name in read_keys],
        *([deny(400, f"{{ req.body -m reg '\"({numbers})\"\\s*:\\s*([^\\s1-9]|[0-9]+\\s*[^\\s0-9,}}])' }}")]
          if integers else []),
        deny(400, f"{{ req.body -m reg '\"({media})\"\\s*:\\s*\"(http|file:)' }}"),
        *format_rules(routes),
        *refused_rules(routes),
    ]
