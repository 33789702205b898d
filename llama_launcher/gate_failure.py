"""Why the gate process gave up on llama-server, written by the gate and read by the parent.

The parent only sees the gate's exit code (`GATE_EXIT_GAVE_UP`); this file in the runtime dir lets
its last line name the cause and a remedy instead. Writer and reader live together so the record's
shape cannot drift between the two processes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from llama_direct.runtime import GATE_FAILURE_FILE
from llama_launcher.errors import StartError
from llama_launcher.smoke import remedy


def write_report(runtime: Path, error: StartError, extra_args: Sequence[str]) -> bool:
    """Leave the cause for the parent; False if the report could not be written. The lines were
    redacted as they were read."""
    record = {"message": str(error), "last_lines": error.last_lines[-10:],
              "remedy": remedy(error.exit_code, extra_args, "serve")}
    try:
        (runtime / GATE_FAILURE_FILE).write_text(json.dumps(record))
    except OSError:
        return False
    return True


def read_report(runtime: Path) -> str | None:
    """The gate's report in words (the cause, llama-server's last lines, the remedy); None if the gate
    left none, or one that cannot be read."""
    try:
        record = json.loads((runtime / GATE_FAILURE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("message"), str):
        return None
    lines = [str(line) for line in record.get("last_lines", [])][-5:]
    said = "".join(f"\n  llama-server said: {line}" for line in lines)
    remedy_line = f"\n  {record['remedy']}" if isinstance(record.get("remedy"), str) else ""
    return f"{record['message']}{said}{remedy_line}"
