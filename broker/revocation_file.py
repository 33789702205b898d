"""The revocations on disk, so a broker restart does not revive a revoked token.

A revocation matters until every token it covers has expired (`Revocations.prune`), longer than a
restart may take. The file is the data dir's `revocations.json`, 0600, replaced atomically (a
temporary file, fsynced, then renamed over it), so a crash leaves the old list or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

from llama_direct.replay import Revocations

logger = logging.getLogger(__name__)

REVOCATIONS_FILE = "revocations.json"


def load_revocations(data_dir: Path, now: float) -> Revocations:
    """What was saved, pruned to what still matters; none when there is no file or it is damaged."""
    path = data_dir / REVOCATIONS_FILE
    try:
        revocations = Revocations.from_dict(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return Revocations()
    except (ValueError, OSError):
        logger.warning("event=revocations_file_unreadable action=starting_empty")
        return Revocations()
    revocations.prune(now)
    return revocations


def save_revocations(data_dir: Path, revocations: Revocations) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / REVOCATIONS_FILE
    tmp = path.with_name(f".{REVOCATIONS_FILE}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(json.dumps(revocations.to_dict()).encode())
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
