"""Scrub registered secrets from every log record of the process.

Keys are kept out of logs by construction; this filter is the second line of defence, for the
record nobody expected (an exception message quoting a header, a child process echoing its env).
A secret is registered the moment it is created, so there is no window in which it could leak.
"""

from __future__ import annotations

import logging
import threading

REDACTED = "[redacted]"
_MIN_SECRET_LENGTH = 8
MAX_EPHEMERAL_SECRETS = 1024
"""As many as the broker keeps sessions (`broker.sessions.MAX_SESSIONS`): an older session id names nobody."""

_lock = threading.Lock()
_lasting: set[str] = set()
_ephemeral: dict[str, None] = {}
"""Insertion-ordered, so the oldest goes first once the bound is passed."""
_secrets: tuple[str, ...] = ()


def register_secret(secret: str | bytes, *, ephemeral: bool = False) -> None:
    """Remember a secret so that every later log record is scrubbed of it.

    Keys and the access token last for the process. An `ephemeral` secret (a session id) is one of
    at most `MAX_EPHEMERAL_SECRETS`, the oldest forgotten first, so logins cannot grow the list (and
    the cost of scrubbing each record) forever; a session that old has been evicted and is worthless.
    Short values are refused: redacting them would mangle ordinary words, and no real key is short.
    """
    text = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret
    if len(text) < _MIN_SECRET_LENGTH:
        raise ValueError("a secret to redact must be at least 8 characters long")
    with _lock:
        if ephemeral:
            _ephemeral.pop(text, None)
            _ephemeral[text] = None
            while len(_ephemeral) > MAX_EPHEMERAL_SECRETS:
                del _ephemeral[next(iter(_ephemeral))]
        else:
            _lasting.add(text)
        _rebuild()


def forget_secret(secret: str) -> None:
    """Stop scrubbing an ephemeral secret (a session that has ended); a lasting one stays."""
    with _lock:
        if secret in _ephemeral:
            del _ephemeral[secret]
            _rebuild()


def registered_count() -> int:
    return len(_secrets)


def _rebuild() -> None:
    global _secrets
    # Longest first, so a secret that contains another is replaced whole.
    _secrets = tuple(sorted(_lasting | _ephemeral.keys(), key=len, reverse=True))



def redact(text: str) -> str:
    """Replace every registered secret in ``text``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Renders each record once, scrubbed, so args and exception text cannot reintroduce a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_installed = False


def install() -> None:
    """Attach the filter to every handler of the root logger, present and future.

    A filter on a logger only sees records logged through that logger, not those propagated from
    children; a filter on each handler sees everything that is written, which is what matters.
    """
    global _installed
    if _installed:
        return
    _installed = True
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(RedactingFilter())
    original_add_handler = root.addHandler

    def add_handler(handler: logging.Handler) -> None:
        handler.addFilter(RedactingFilter())
        original_add_handler(handler)

    root.addHandler = add_handler  # type: ignore[method-assign, assignment]  # wraps the bound method on purpose
