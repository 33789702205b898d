"""The broker's and the gate's stable ids (`iss` and `aud`), kept in `<data dir>/ids.json`.

Both processes read the same file, so a token the broker mints names the gate that checks it, and
a restart keeps both ids. Neither id is a secret.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

IDS_FILE = "ids.json"
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
"""What an id, an audience or an issuer name may be: no spaces, no quotes, nothing to escape."""


@dataclass(frozen=True)
class Ids:
    """`broker_id` is every token's `iss`, `gate_id` its `aud`."""

    broker_id: str
    gate_id: str


class IdsFileError(ValueError):
    """The ids file is damaged; the message names no path."""


def load_or_create_ids(data_dir: Path | str) -> Ids:
    """Read the ids, or make and keep them the first time; two processes racing agree on one file."""
    path = Path(data_dir) / IDS_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    ids = Ids(broker_id=f"broker-{secrets.token_hex(8)}", gate_id=f"gate-{secrets.token_hex(8)}")
    data = json.dumps({"broker_id": ids.broker_id, "gate_id": ids.gate_id}, indent=2).encode()
    tmp = path.with_name(f".{IDS_FILE}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _read(path)
    finally:
        tmp.unlink()
    return ids


def _read(path: Path) -> Ids:
    try:
        raw = json.loads(path.read_bytes())
    except ValueError:
        raise IdsFileError("the ids file is damaged") from None
    if not isinstance(raw, dict):
        raise IdsFileError("the ids file is damaged")
    broker_id, gate_id = raw.get("broker_id"), raw.get("gate_id")
    if not (isinstance(broker_id, str) and isinstance(gate_id, str)) or not all(
        ID_PATTERN.fullmatch(v) for v in (broker_id, gate_id)
    ):
        raise IdsFileError("the ids file is damaged")
    return Ids(broker_id=broker_id, gate_id=gate_id)
