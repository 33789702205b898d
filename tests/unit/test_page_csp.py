"""The page is served with a Content-Security-Policy: its own script only, never inline or remote."""

from __future__ import annotations

from broker.static import PAGE_CSP
from tests.unit.test_broker_app import Harness, _lane_on, h, make  # noqa: F401  (fixtures)


def _directives(policy: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}


def test_the_page_carries_the_policy(h: Harness) -> None:  # noqa: F811
    h.login()
    answer = h.client.get("/", headers={"Accept": "text/html"})
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == PAGE_CSP


def test_the_policy_forbids_inline_and_remote_script() -> None:
    directives = _directives(PAGE_CSP)
    assert directives["script-src"] == ["'self'"]
    assert directives["default-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert not any("unsafe" in value for values in directives.values() for value in values)
