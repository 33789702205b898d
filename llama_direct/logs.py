"""Where the project's processes log: a private rotated file each, and the terminal only for a person.

An operator reads a terminal for what needs them (a warning, a crash) and a file for the rest, so the
terminal gets WARNING and above and the file INFO and above (both DEBUG with ``serve --verbose``).
Each process writes a file of its own (``serve.log``, ``gate.log``, ``broker.log`` in the data
dir's ``logs/``): a rotating handler renames its file, and two processes rotating one file would
lose lines. Every handler carries the redaction filter, so the file and the JSON lines are scrubbed
exactly as the terminal is.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from io import TextIOWrapper
from logging.handlers import RotatingFileHandler
from pathlib import Path

from llama_direct.redaction import RedactingFilter, install
from llama_direct.runtime import LOG_DIR_ENV, LOG_FORMAT_ENV, LOG_LEVEL_ENV, log_file_path

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
"""Ten megabytes a file, five old ones kept: 60 MB at most a process, and weeks of a quiet server."""
HELD_RECORDS = 1000
"""What the parent keeps until its file opens (it holds the data dir only after the ports are bound)."""
LOG_FORMATS = ("text", "json")
_TEXT = "%(asctime)s level=%(levelname)s process={process} logger=%(name)s %(message)s"
_QUIET_LOGGERS = ("httpx", "httpcore")
"""They log each request the processes make of each other (health polls, twice a second)."""


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A rotating file made 0600 from its first byte: a log line may name a user or a path."""

    def _open(self) -> TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, 0o600)
        os.fchmod(fd, 0o600)  # a file left by an older version, or made under another umask
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers; the message is the record as redacted."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self.process,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class TerminalFormatter(logging.Formatter):
    """`llama-direct gate: warning: ...`: short, with the process it came from and no logger name."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.prefix = "llama-direct" if process == "serve" else f"llama-direct {process}"

    def format(self, record: logging.LogRecord) -> str:
        text = f"{self.prefix}: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return f"{text}\n{record.exc_text}" if record.exc_text else text


class _Held(logging.Handler):
    """The parent's records until its file opens, the newest `HELD_RECORDS` of them, already redacted."""

    def __init__(self) -> None:
        super().__init__()
        self.records: deque[logging.LogRecord] = deque(maxlen=HELD_RECORDS)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _env_level() -> int | None:
    """`LLAMA_DIRECT_LOG_LEVEL` (``serve --verbose`` sets DEBUG), or None when unset or unknown."""
    name = os.environ.get(LOG_LEVEL_ENV, "").upper()
    level = logging.getLevelName(name) if name else None
    return level if isinstance(level, int) else None


def _with_filter(handler: logging.Handler, level: int) -> logging.Handler:
    handler.setLevel(level)
    handler.addFilter(RedactingFilter())
    return handler


def file_handler(path: Path, process: str, json_lines: bool, level: int = logging.INFO) -> logging.Handler:
    """The rotated, private, redacted file of one process."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handler = PrivateRotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    handler.setFormatter(JsonFormatter(process) if json_lines else logging.Formatter(_TEXT.format(process=process)))
    return _with_filter(handler, level)


class _AtOrFrom(logging.Filter):
    """Records at `level` and up, and every record of the `whole` loggers (a child's own output)."""

    def __init__(self, level: int, whole: tuple[str, ...]) -> None:
        super().__init__()
        self.level = level
        self.whole = whole

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.name in self.whole


def configure_logging(process: str, *, file_pending: bool = False, whole: tuple[str, ...] = ()) -> None:
    """Set up one of the project's processes: the terminal, and its log file where serve named a dir.

    Children learn the dir, the format and the level from serve's environment. The parent passes
    `file_pending`: its own file opens later (`open_log_file`), and what it logs until then is held.
    A process started on its own, with no dir, logs INFO to the terminal, as there is nowhere else.
    `whole`: loggers whose every line the file keeps, DEBUG included: llama-server's own output,
    which the gate logs line by line and the terminal shows only with ``--verbose``.
    """
    chosen = _env_level()
    log_dir = os.environ.get(LOG_DIR_ENV)
    has_file = bool(log_dir) or file_pending
    file_level = min(logging.INFO, chosen if chosen is not None else logging.INFO)
    terminal_level = chosen if chosen is not None else (logging.WARNING if has_file else logging.INFO)
    terminal = logging.StreamHandler(sys.stderr)
    verbose = chosen is not None and chosen <= logging.DEBUG
    terminal.setFormatter(logging.Formatter(_TEXT.format(process=process)) if verbose or not has_file
                          else TerminalFormatter(process))
    handlers = [_with_filter(terminal, terminal_level)]
    if log_dir:
        json_lines = os.environ.get(LOG_FORMAT_ENV) == "json"
        to_file = file_handler(log_file_path(Path(log_dir), process), process, json_lines, logging.DEBUG)
        to_file.addFilter(_AtOrFrom(file_level, whole))
        handlers.append(to_file)
        for name in whole:
            logging.getLogger(name).setLevel(logging.DEBUG)
    elif file_pending:
        handlers.append(_with_filter(_Held(), file_level))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, PrivateRotatingFileHandler):
            old.close()  # a file of an earlier configuration in this process (tests run several)
    root.handlers[:] = handlers
    root.setLevel(min(terminal_level, file_level) if has_file else terminal_level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    install()


def open_log_file(log_dir: Path, process: str) -> Path:
    """The parent's own file, once it holds the data dir: what was held goes in first, then all else."""
    root = logging.getLogger()
    held = next((h for h in root.handlers if isinstance(h, _Held)), None)
    level = held.level if held is not None else logging.INFO
    path = log_file_path(log_dir, process)
    handler = file_handler(path, process, os.environ.get(LOG_FORMAT_ENV) == "json", level)
    if held is not None:
        for record in held.records:
            handler.handle(record)
        root.removeHandler(held)
    root.addHandler(handler)
    return path
