"""Login sessions on disk, so a restart of `serve` logs nobody out.

The data dir's `sessions.json` (0600, replaced whole: `broker.private_file`) holds each session by the
digest of its id with its user and when it began, never the id itself: a copy of the file cannot be
replayed as a cookie. A session lasts `SESSION_LIFETIME` (the cookie's `Max-Age` too); older ones are
dropped when the file is read. A damaged file starts empty, with a warning: everyone logs in again,
which is safe. With Redis (a fleet) sessions live there instead (`broker.shared_state`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from broker.sessions import MAX_SESSIONS, SessionStore, session_digest
from llama_direct.private_file import write_private_json
from llama_direct.runtime import SESSIONS_FILE

logger = logging.getLogger(__name__)

SESSION_LIFETIME = 30 * 24 * 3600
"""Thirty days: a browser stays logged in across restarts for a month, then opens the link again."""


class SavedSessions(SessionStore):
    """A `SessionStore` written to the data dir after each login and logout."""

    def __init__(self, data_dir: Path, now: float, max_sessions: int = MAX_SESSIONS) -> None:
        self._path = data_dir / SESSIONS_FILE
        self._began = _read(self._path, now)
        super().__init__(max_sessions, {digest: user for digest, (user, _) in self._began.items()})

    def create(self, user: str) -> str:
        session_id = super().create(user)
        self._began[session_digest(session_id)] = (user, time.time())
        self._save()
        return session_id

    def drop(self, session_id: str | None) -> None:
        before = len(self)
        super().drop(session_id)
        if len(self) != before:
            self._save()

    def _save(self) -> None:
        kept = self.kept()
        self._began = {digest: self._began[digest] for digest in kept if digest in self._began}
        document = {"sessions": {digest: {"user": user, "began": began}
                                 for digest, (user, began) in self._began.items()}}
        try:
            write_private_json(self._path, document)
        except OSError:
            logger.warning("event=sessions_file_unwritable action=kept_in_memory")


def _read(path: Path, now: float) -> dict[str, tuple[str, float]]:
    """digest -> (user, began), oldest first, without the sessions past their lifetime."""
    try:
        document = json.loads(path.read_bytes())
        entries = document["sessions"]
        sessions = {str(digest): (str(entry["user"]), float(entry["began"])) for digest, entry in entries.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, OSError, KeyError, TypeError, AttributeError):
        logger.warning("event=sessions_file_unreadable action=starting_empty")
        return {}
    live = {digest: entry for digest, entry in sessions.items() if now - entry[1] < SESSION_LIFETIME}
    return dict(sorted(live.items(), key=lambda item: item[1][1]))
