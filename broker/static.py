"""The built page's files, served from the package, never from outside its folder."""

from __future__ import annotations

import hashlib
from importlib import resources
from importlib.resources.abc import Traversable

STATIC_PACKAGE = "broker"
STATIC_DIR = "static"


UNBUILT_PAGE = (
    "<!doctype html><meta charset=utf-8><title>llama-direct</title>"
    "<p>The page has not been built yet: run <code>npm run build</code> in <code>frontend/</code>.</p>"
)


# The page's Content-Security-Policy: its own script only (no inline or remote script, no eval), its own
# stylesheet, no plugins, no <base> and no framing. Model output is rendered as sanitized Markdown; this
# is the net under that sanitizer. Images may come from anywhere (a reply's image loads only after a
# click that names its host, attachments are data: URLs), and fetch may reach the direct lane, which
# may sit on another origin than the page.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: http:; "
    "connect-src 'self' https: http:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


USER_MARK = b'<meta name="llama-direct-user" content="" />'
"""The page's slot for its user's key: the broker fills it, so the page keeps each user's conversations
apart without asking (a meta tag, as the page's CSP runs no inline script)."""

LOGIN_FILE = "login.html"
"""The styled login page a browser gets when its session has ended; `LOGIN_PAGE` where it is not built."""


def user_key(user: str) -> str:
    """A stable key for `user` that does not spell the name out (the page names its store by it)."""
    return hashlib.sha256(b"llama-direct.page-user\0" + user.encode()).hexdigest()[:20]


def page_for(page: bytes, user: str) -> bytes:
    """The chat page with its user's key in its slot (hex, so nothing needs escaping)."""
    return page.replace(USER_MARK, USER_MARK.replace(b'content=""', f'content="{user_key(user)}"'.encode()), 1)


def _static_root() -> Traversable:
    return resources.files(STATIC_PACKAGE).joinpath(STATIC_DIR)


def static_file(name: str) -> bytes | None:
    """A file of the built page, from package data so an installed wheel serves it; None when absent.

    Walked one plain segment at a time, so no `..`, hidden name or odd character can leave the folder.
    """
    segments = name.split("/")
    if not name or any(not _plain_segment(segment) for segment in segments):
        return None
    node = _static_root()
    for segment in segments:
        node = node.joinpath(segment)
    try:
        return node.read_bytes() if node.is_file() else None
    except OSError:
        return None


def _plain_segment(segment: str) -> bool:
    return (
        bool(segment)
        and not segment.startswith(".")
        and all(c.isascii() and (c.isalnum() or c in "-_.") for c in segment)
    )
