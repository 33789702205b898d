"""The log set-up (issue 24): a private, rotated file per process at INFO, WARNING and up on the
terminal, JSON lines on request, and every one of them redacted as the terminal is."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from logging.handlers import RotatingFileHandler
from pathlib import Path

import pytest

from llama_direct import logs
from llama_direct.redaction import REDACTED, register_secret
from llama_direct.runtime import LOG_DIR_ENV, LOG_FORMAT_ENV, LOG_LEVEL_ENV, log_file_path

SECRET = "log-test-secret-4f1c9a7e"


@pytest.fixture(autouse=True)
def _root_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test configures the root logger afresh; the one pytest had comes back after it."""
    for name in (LOG_DIR_ENV, LOG_FORMAT_ENV, LOG_LEVEL_ENV):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def _file_handler() -> RotatingFileHandler:
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, RotatingFileHandler)]
    return handler


def _configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, process: str = "gate", **env: str) -> Path:
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "logs"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    logs.configure_logging(process)
    return log_file_path(tmp_path / "logs", process)


def test_the_file_is_private_rotated_and_at_info(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _configure(monkeypatch, tmp_path)
    log = logging.getLogger("llama_launcher.gate.test")
    log.debug("too fine for the file")
    log.info("an INFO line for the file")
    handler = _file_handler()
    handler.flush()
    assert path.name == "gate.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert (handler.maxBytes, handler.backupCount) == (10 * 1024 * 1024, 5)
    text = path.read_text()
    assert "level=INFO process=gate logger=llama_launcher.gate.test an INFO line for the file" in text
    assert "too fine" not in text
    handler.doRollover()
    log.info("after the rollover")
    handler.flush()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name("gate.log.1").stat().st_mode) == 0o600
    assert path.read_text().count("\n") == 1


def test_an_existing_file_is_made_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    older = tmp_path / "logs" / "broker.log"
    older.write_text("from an older version\n")
    older.chmod(0o644)
    _configure(monkeypatch, tmp_path, "broker")
    assert stat.S_IMODE(older.stat().st_mode) == 0o600


def test_the_terminal_gets_only_warnings_and_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _configure(monkeypatch, tmp_path)
    log = logging.getLogger("llama_launcher.gate.test")
    log.info("the keys are not there yet")
    log.warning("cannot pull keys")
    log.error("llama-server exited")
    assert capsys.readouterr().err.splitlines() == [
        "llama-direct gate: warning: cannot pull keys",
        "llama-direct gate: error: llama-server exited",
    ]
    _file_handler().flush()
    assert path.read_text().count("\n") == 3


def test_verbose_sends_everything_to_the_terminal_as_well(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _configure(monkeypatch, tmp_path, **{LOG_LEVEL_ENV: "DEBUG"})
    logging.getLogger("llama_launcher.server_process.llama_server").debug("srv  load_model: loading")
    assert "level=DEBUG process=gate" in capsys.readouterr().err
    _file_handler().flush()
    assert "srv  load_model: loading" in path.read_text()


def test_json_lines_one_object_a_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _configure(monkeypatch, tmp_path, "broker", **{LOG_FORMAT_ENV: "json"})
    log = logging.getLogger("broker.test")
    log.info("event=login user=%s", "alice")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("event=unhandled_error")
    _file_handler().flush()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert {k: first[k] for k in ("level", "process", "logger", "message")} == {
        "level": "INFO", "process": "broker", "logger": "broker.test", "message": "event=login user=alice"}
    assert first["time"].endswith("Z") and isinstance(first["pid"], int)
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_file_is_redacted_as_the_terminal_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    register_secret(SECRET)
    path = _configure(monkeypatch, tmp_path, **{LOG_FORMAT_ENV: log_format})
    log = logging.getLogger("llama_launcher.gate.test")
    log.info("a header said Bearer %s", SECRET)
    try:
        raise RuntimeError(f"the key {SECRET} was refused")
    except RuntimeError:
        log.exception("failed")
    _file_handler().flush()
    written = path.read_text()
    terminal = capsys.readouterr().err
    for text in (written, terminal):
        assert SECRET not in text
        assert REDACTED in text
    assert written.count(REDACTED) == 2


def test_the_parents_early_records_reach_its_file_once_it_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure_logging("serve", file_pending=True)
    logging.getLogger("llama_launcher.supervisor").info("before the data dir was held")
    logging.getLogger("llama_launcher.supervisor").warning("a warning")
    assert capsys.readouterr().err == "llama-direct: warning: a warning\n"
    path = logs.open_log_file(tmp_path / "logs", "serve")
    logging.getLogger("llama_launcher.supervisor").info("after")
    _file_handler().flush()
    lines = path.read_text().splitlines()
    assert [line.rpartition("logger=llama_launcher.supervisor ")[2] for line in lines] == [
        "before the data dir was held", "a warning", "after"]


def test_a_process_on_its_own_logs_info_to_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging("broker")
    logging.getLogger("broker.test").info("event=broker_listening sockets=2")
    assert "level=INFO process=broker logger=broker.test event=broker_listening" in capsys.readouterr().err
    assert not [h for h in logging.getLogger().handlers if isinstance(h, RotatingFileHandler)]


def test_llama_servers_own_lines_go_to_the_file_whole_and_not_to_the_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = logging.getLogger("test.child_output")
    monkeypatch.setattr(output, "level", logging.NOTSET)
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "logs"))
    logs.configure_logging("gate", whole=(output.name,))
    output.debug("srv  params_from_: Chat format: Content-only")
    output.info("main: model loaded")
    logging.getLogger("llama_launcher.gate.test").debug("a gate detail")
    _file_handler().flush()
    text = log_file_path(tmp_path / "logs", "gate").read_text()
    assert "Chat format: Content-only" in text and "model loaded" in text
    assert "a gate detail" not in text
    assert capsys.readouterr().err == ""
