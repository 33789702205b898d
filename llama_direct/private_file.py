"""A file the broker or the launcher keeps in the data dir: readable by its owner only, replaced whole.

Written to a temporary file (0600, created exclusively, never through a link), fsynced, then renamed
over the old one, so a crash leaves the old document or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def write_private_json(path: Path, value: object) -> None:
    write_private(path, json.dumps(value).encode())


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
