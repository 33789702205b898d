"""The revocations on disk, so a broker restart does not revive a revoked token.

A revocation matters until every token it covers has expired (`Revocations.prune`), longer than a
restart may take. The file is the data dir's `revocations.json`, 0600, replaced atomically
(`broker.private_file`), so a crash leaves the old list or the new one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from llama_direct.private_file import write_private_json
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
    write_private_json(data_dir / REVOCATIONS_FILE, revocations.to_dict())
