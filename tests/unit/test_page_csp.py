"""The page is served with a Content-Security-Policy (its own script only, never inline or remote), names
its user by a key so each user's conversations are kept apart, and an ended session gets the styled
login page under the same policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from broker_harness import Harness, _lane_on, h, make  # noqa: F401  (fixtures)

import broker.static as broker_static
from broker.static import LOGIN_FILE, PAGE_CSP, USER_MARK, page_for, user_key


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


def test_the_page_names_its_user_by_a_key_not_by_name(h: Harness, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                      tmp_path: Path) -> None:
    static = tmp_path / "page"
    static.mkdir()
    (static / "index.html").write_bytes(b"<head>" + USER_MARK + b"</head>")
    monkeypatch.setattr(broker_static, "_static_root", lambda: static)
    h.login()
    page = h.client.get("/", headers={"Accept": "text/html"}).text
    key = re.fullmatch(r'<head><meta name="llama-direct-user" content="([0-9a-f]{20})" /></head>', page)
    assert key is not None and key.group(1) == user_key("local")
    assert "local" not in page


def test_each_user_has_their_own_key() -> None:
    assert user_key("alice") != user_key("bob")
    assert user_key("alice") == user_key("alice")
    assert page_for(b"no mark here", "alice") == b"no mark here"


def test_an_ended_session_gets_the_styled_login_page_under_the_policy(h: Harness,  # noqa: F811
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    answer = h.client.get("/", headers={"Accept": "text/html"})
    assert (answer.status_code, answer.headers["content-security-policy"]) == (401, PAGE_CSP)
    assert "Log in first" in answer.text  # the built page's login.html is absent in this harness
    static = tmp_path / "page"
    static.mkdir()
    (static / LOGIN_FILE).write_text('<link rel="stylesheet" href="app.css"><h1>Log in</h1>')
    monkeypatch.setattr(broker_static, "_static_root", lambda: static)
    answer = h.client.get("/", headers={"Accept": "text/html"})
    assert (answer.status_code, answer.text) == (401, '<link rel="stylesheet" href="app.css"><h1>Log in</h1>')
    assert answer.headers["content-security-policy"] == PAGE_CSP
    assert answer.headers["cache-control"] == "no-store"
