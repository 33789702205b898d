"""The owner's access token, kept in the data dir so the login link survives a restart.

A new token at every start logged every browser out and broke every bookmark. Now the first start
writes one to the data dir's `access-token` (0600, created exclusively, so two starts cannot race to
two tokens), and every later start reads it back; the ready line prints the same link each time.
`llama-direct rotate-token` replaces it and ends every browser session, while serve is stopped (it
holds the token in memory). A token from `--access-token-file` or the environment wins, as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from llama_direct.metrics import METRICS_TOKEN_FILE
from llama_direct.private_file import write_private
from llama_direct.runtime import ACCESS_TOKEN_FILE, SESSIONS_FILE
from llama_launcher.errors import LauncherError

MIN_LENGTH = 16


def new_token() -> str:
    return secrets.token_urlsafe(24)


def stored_access_token(data_dir: Path) -> str:
    """The data dir's token, written first if there is none."""
    return _stored(data_dir / ACCESS_TOKEN_FILE, "access token", "run llama-direct rotate-token")


def stored_metrics_token(data_dir: Path) -> str:
    """The data dir's metrics token (what a scrape of `/metrics` carries), written first if there is none."""
    return _stored(data_dir / METRICS_TOKEN_FILE, "metrics token", "remove it, and serve makes a new one")


def _stored(path: Path, what: str, fix: str) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = new_token()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read(path, what, fix)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


def rotate_access_token(data_dir: Path) -> None:
    """A new token in place of the old one, and no session left: every browser logs in again."""
    write_private(data_dir / ACCESS_TOKEN_FILE, (new_token() + "\n").encode())
    with contextlib.suppress(FileNotFoundError):
        (data_dir / SESSIONS_FILE).unlink()


def _read(path: Path, what: str, fix: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        why = "it is a symlink" if error.errno == errno.ELOOP else error.strerror
        raise LauncherError(f"cannot read the {what} in the data dir ({why})") from None
    with os.fdopen(fd) as file:
        if os.fstat(file.fileno()).st_mode & 0o077:
            raise LauncherError(f"the {what} file {path} is readable by others: chmod 600 it, or {fix}")
        token = file.read().strip()
    if len(token) < MIN_LENGTH:
        raise LauncherError(f"the {what} file {path} is damaged: {fix}")
    return token
