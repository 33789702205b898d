"""The owner's login link survives a restart; rotate-token replaces it and ends the sessions (issue 29)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from llama_direct.runtime import ACCESS_TOKEN_FILE, SESSIONS_FILE
from llama_launcher import cli
from llama_launcher.access_token import stored_access_token
from llama_launcher.errors import LauncherError
from llama_launcher.supervisor import DataDirLock


def test_the_first_start_writes_a_private_token_and_every_later_start_reads_it(tmp_path: Path) -> None:
    first = stored_access_token(tmp_path / "data")
    assert len(first) >= 16
    path = tmp_path / "data" / ACCESS_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored_access_token(tmp_path / "data") == first


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    stored_access_token(tmp_path)
    os.chmod(tmp_path / ACCESS_TOKEN_FILE, 0o644)
    with pytest.raises(LauncherError, match="readable by others"):
        stored_access_token(tmp_path)


def test_a_damaged_token_file_names_the_remedy(tmp_path: Path) -> None:
    path = tmp_path / ACCESS_TOKEN_FILE
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(LauncherError, match="rotate-token"):
        stored_access_token(tmp_path)


def test_rotate_token_replaces_it_and_logs_every_browser_out(tmp_path: Path) -> None:
    old = stored_access_token(tmp_path)
    (tmp_path / SESSIONS_FILE).write_text("{}")
    assert cli.main(["rotate-token", "--data-dir", str(tmp_path)]) == 0
    new = stored_access_token(tmp_path)
    assert new != old and len(new) >= 16
    assert stat.S_IMODE((tmp_path / ACCESS_TOKEN_FILE).stat().st_mode) == 0o600
    assert not (tmp_path / SESSIONS_FILE).exists()


def test_rotate_token_refuses_while_serve_holds_the_data_dir(tmp_path: Path) -> None:
    old = stored_access_token(tmp_path)
    held = DataDirLock(tmp_path)  # what a running serve holds
    assert cli.main(["rotate-token", "--data-dir", str(tmp_path)]) == 2
    assert stored_access_token(tmp_path) == old
    held.close()
