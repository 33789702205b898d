"""Every grant claim is declared once and enforced at both enforcement points (issue 26).

Walks `GRANT_FIELDS`: each must be a field of `Grant`; its gate enforcer must exist and read it; its
HAProxy rule must exist, render lines that read the claim, and those lines must be in every lane
backend of a rendered config. A claim added without both enforcers fails here, and the renderer
refuses to render a config for it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from llama_direct import tokens
from llama_direct.tokens import GRANT_FIELDS, Grant, GrantField
from llama_launcher import haproxy_grant
from llama_launcher.haproxy_config import HaproxyPlan, render
from llama_launcher.haproxy_grant import checked_routes, grant_rules

PLAN = HaproxyPlan(bind="127.0.0.1:8443", upstreams=("127.0.0.1:9001=alpha", "127.0.0.1:9002"),
                   public_keys=("/etc/haproxy/broker.pem",), audience="fleet", issuers=("broker-a",))


def _resolve(name: str) -> Callable[..., Any]:
    module, _, qualname = name.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    assert callable(found), name
    return found


def test_the_declarations_are_the_grants_fields_in_order() -> None:
    assert [f.name for f in GRANT_FIELDS] == [f.name for f in dataclasses.fields(Grant)]
    required = {f.name for f in dataclasses.fields(Grant) if f.default is dataclasses.MISSING}
    assert {f.name for f in GRANT_FIELDS if f.required} == required


@pytest.mark.parametrize("field", GRANT_FIELDS, ids=lambda f: f.name)
def test_the_gate_enforcer_exists_and_reads_the_claim(field: GrantField) -> None:
    assert field.gate.startswith("llama_launcher.gate.")
    source = inspect.getsource(_resolve(field.gate))
    assert f".{field.name}" in source, f"{field.gate} does not read grant.{field.name}"


@pytest.mark.parametrize("field", GRANT_FIELDS, ids=lambda f: f.name)
def test_the_haproxy_rule_exists_reads_the_claim_and_is_rendered_in_every_lane_backend(field: GrantField) -> None:
    assert field.haproxy.startswith(f"{haproxy_grant.__name__}:")
    lines = _resolve(field.haproxy)(checked_routes())
    assert any(f"'$.grant.{field.name}" in line for line in lines), f"{field.haproxy} does not read the claim"
    config = render(PLAN)
    lanes = [section for section in config.split("\n\n") if section.startswith("backend lane")]
    assert len(lanes) == 2  # alpha's, and the one for models no upstream lists
    for backend in lanes:
        assert all(line in backend.splitlines() for line in lines), (field.name, backend.splitlines()[0])


def test_a_claim_without_a_haproxy_rule_renders_no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = GrantField("max_images", False, gate="llama_launcher.gate.shaping:shape_chat_body")
    monkeypatch.setattr(haproxy_grant, "GRANT_FIELDS", (*GRANT_FIELDS, extra))
    with pytest.raises(ValueError, match="max_images"):
        grant_rules(checked_routes())
    with pytest.raises(ValueError, match="max_images"):
        render(PLAN)


def test_an_unknown_claim_is_refused_by_an_old_gate() -> None:
    claim = {**Grant(routes=(("POST", "/v1/chat/completions"),), model="m", max_tokens=4).to_claim(), "new": 1}
    with pytest.raises(tokens.MalformedToken):
        Grant.from_claim(claim)
