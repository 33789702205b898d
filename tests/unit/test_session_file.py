"""Login sessions survive a restart of serve, kept by digest in a 0600 file (issue 29)."""

from __future__ import annotations

import json
import logging
import stat
import time
from pathlib import Path

import pytest

from broker.session_file import SESSION_LIFETIME, SavedSessions
from llama_direct.runtime import SESSIONS_FILE


def test_a_session_outlives_a_restart_and_its_logout_too(tmp_path: Path) -> None:
    first = SavedSessions(tmp_path, time.time())
    kept, ended = first.create("local"), first.create("local")
    first.drop(ended)
    again = SavedSessions(tmp_path, time.time())  # the broker started anew
    assert again.user_for(kept) == "local"
    assert again.user_for(ended) is None


def test_the_file_is_private_and_holds_no_session_id(tmp_path: Path) -> None:
    store = SavedSessions(tmp_path, time.time())
    session_id = store.create("local")
    path = tmp_path / SESSIONS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert session_id not in path.read_text()
    assert next(iter(json.loads(path.read_text())["sessions"].values()))["user"] == "local"


def test_a_session_past_its_lifetime_is_dropped_when_the_file_is_read(tmp_path: Path) -> None:
    session_id = SavedSessions(tmp_path, time.time()).create("local")
    later = time.time() + SESSION_LIFETIME + 1
    assert SavedSessions(tmp_path, later).user_for(session_id) is None


def test_a_damaged_file_starts_empty_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / SESSIONS_FILE).write_text('{"sessions": [1, 2')
    with caplog.at_level(logging.WARNING, logger="broker.session_file"):
        store = SavedSessions(tmp_path, time.time())
    assert len(store) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "broker.session_file"] == [
        "event=sessions_file_unreadable action=starting_empty"]


def test_the_oldest_go_first_across_restarts(tmp_path: Path) -> None:
    store = SavedSessions(tmp_path, time.time(), max_sessions=2)
    oldest, *rest = [store.create(user) for user in ("a", "b", "c")]
    again = SavedSessions(tmp_path, time.time(), max_sessions=2)
    assert again.user_for(oldest) is None
    assert [again.user_for(s) for s in rest] == ["b", "c"]
