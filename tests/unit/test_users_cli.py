"""`llama-direct users`: through the one console script's `main`, on a real store in a temp data dir."""

from __future__ import annotations

import http.server
import json
import math
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from redis_server import RedisServer

from llama_direct.control import USERS_CHANGED_PATH
from llama_direct.runtime import CONTROL_SOCKET, REDIS_URL_ENV, format_runtime_line, serve_log_path
from llama_direct.user_store import open_store
from llama_direct.users import Limits, secret_digest
from llama_launcher.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["users", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _secrets(out: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in out.strip().splitlines())


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    return tmp_path / "data"


def test_add_prints_a_login_link_and_an_api_key_once(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, err = _run(capsys, "add", "Ann", "--models", "smol,big", "--tokens-per-day", "100", "--max-tokens",
                          "64", "--url", "https://box.lan:8443/", "--data-dir", str(data_dir))
    assert code == 0, err
    shown = _secrets(out)
    assert shown["login link"].startswith("https://box.lan:8443/?token=ldt_")
    assert shown["API key"].startswith("ldk_")
    assert "user ann added" in err
    store = open_store(data_dir)
    token = shown["login link"].split("?token=", 1)[1]
    found = store.credential(secret_digest(token))
    assert found is not None and found.user.name == "ann"
    assert found.user.limits == Limits(models=("smol", "big"), tokens_per_day=100, max_tokens=64)

    code, out, err = _run(capsys, "list", "--data-dir", str(data_dir))
    assert code == 0
    assert "ann" in out and secret_digest(token)[:8] in out and "models=smol,big" in out
    assert token not in out + err and shown["API key"] not in out + err


def test_the_link_base_comes_from_the_address_serve_printed(capsys: pytest.CaptureFixture[str], data_dir: Path,
                                                          tmp_path: Path) -> None:
    log = serve_log_path(data_dir)
    log.parent.mkdir(parents=True)
    log.write_text(format_runtime_line(tmp_path / "old", "127.0.0.1", 8000, url="http://127.0.0.1:8000") + "\n"
                   + format_runtime_line(tmp_path / "new", "0.0.0.0", 9000, url="https://chat.example") + "\n")
    code, out, _ = _run(capsys, "add", "ann", "--data-dir", str(data_dir))
    assert code == 0
    assert _secrets(out)["login link"].startswith("https://chat.example/?token=ldt_")


def test_without_any_address_the_token_is_printed_with_how_to_use_it(capsys: pytest.CaptureFixture[str],
                                                                     data_dir: Path) -> None:
    code, out, err = _run(capsys, "add", "ann", "--data-dir", str(data_dir))
    assert code == 0
    assert _secrets(out)["login token"].startswith("ldt_") and "/?token=" in err


def test_list_json_set_and_clear(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    _run(capsys, "add", "ann", "--streams", "2", "--models", "smol", "--data-dir", str(data_dir))
    code, _, err = _run(capsys, "set", "ANN", "--tokens-per-minute", "50", "--streams", "none", "--data-dir",
                        str(data_dir))
    assert code == 0, err
    code, out, _ = _run(capsys, "list", "--json", "--data-dir", str(data_dir))
    [row] = [json.loads(line) for line in out.splitlines()]
    assert (row["name"], row["tokens_per_minute"], row["streams"], row["models"]) == ("ann", 50, None, ["smol"])
    assert row["id"].startswith("u-") and len(row["login_fingerprint"]) == 8
    _run(capsys, "set", "ann", "--all-models", "--data-dir", str(data_dir))
    user = open_store(data_dir).user("ann")
    assert user is not None and user.limits.models is None


@pytest.mark.parametrize("argv", [
    ["add", "a b"], ["add", "ann", "--streams", "0"], ["set", "bob", "--streams", "1"], ["set", "ann"],
    ["remove", "bob"], ["rotate", "bob"], ["set", "ann", "--models", "x", "--all-models"],
])
def test_mistakes_are_one_sentence_and_exit_2(capsys: pytest.CaptureFixture[str], data_dir: Path,
                                              argv: list[str]) -> None:
    _run(capsys, "add", "ann", "--data-dir", str(data_dir))
    code, out, err = _run(capsys, *argv, "--data-dir", str(data_dir))
    assert code == 2 and out == ""
    assert err.startswith("llama-direct: error: ") and len(err.strip().splitlines()) == 1


def test_a_name_is_added_once(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    assert _run(capsys, "add", "ann", "--data-dir", str(data_dir))[0] == 0
    code, _, err = _run(capsys, "add", "Ann", "--data-dir", str(data_dir))
    assert code == 2 and "exists already" in err


def test_rotate_and_remove_refuse_the_old_secrets(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    _, out, _ = _run(capsys, "add", "ann", "--url", "http://x", "--data-dir", str(data_dir))
    old_key = _secrets(out)["API key"]
    code, out, err = _run(capsys, "rotate", "ann", "--url", "http://x", "--data-dir", str(data_dir))
    assert code == 0 and "not running" in err
    new_key = _secrets(out)["API key"]
    store = open_store(data_dir)
    assert store.credential(secret_digest(old_key)) is None
    assert store.credential(secret_digest(new_key)) is not None
    code, _, err = _run(capsys, "remove", "ann", "--data-dir", str(data_dir))
    assert code == 0 and "removed" in err
    assert store.credential(secret_digest(new_key)) is None and store.users() == []


def test_remove_refuses_a_grant_minted_at_a_gates_start_cut_off(capsys: pytest.CaptureFixture[str],
                                                                 data_dir: Path) -> None:
    """A broker mints no `iat` before its gate's start cut-off, at most the second after now's, which the
    command cannot read (with Redis no broker raises what it writes): its revocation covers that `iat`."""
    _run(capsys, "add", "ann", "--data-dir", str(data_dir))
    store = open_store(data_dir)
    user_id = store.users()[0].user.id
    latest_cut_off = math.floor(time.time()) + 1
    _run(capsys, "remove", "ann", "--data-dir", str(data_dir))
    assert store.revocations(time.time())[user_id] > latest_cut_off


class _Recorder(http.server.BaseHTTPRequestHandler):
    posts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        _Recorder.posts.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def running_serve(data_dir: Path, tmp_path: Path) -> Iterator[list[str]]:
    """A control socket where serve's log says one is: what the command tells is recorded."""
    runtime = Path(tmp_path / "rt")
    runtime.mkdir()
    log = serve_log_path(data_dir)
    log.parent.mkdir(parents=True)
    log.write_text(format_runtime_line(runtime, "127.0.0.1", 8000, url="http://127.0.0.1:8000") + "\n")
    _Recorder.posts = []
    server = _UnixHTTPServer(str(runtime / CONTROL_SOCKET), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Recorder.posts
    finally:
        server.shutdown()
        server.server_close()


def test_remove_and_rotate_tell_the_running_serve(capsys: pytest.CaptureFixture[str], data_dir: Path,
                                                  running_serve: list[str]) -> None:
    _run(capsys, "add", "ann", "--data-dir", str(data_dir))
    _run(capsys, "set", "ann", "--streams", "1", "--data-dir", str(data_dir))
    assert running_serve == []  # limits are read at each request: nothing to tell
    code, _, err = _run(capsys, "rotate", "ann", "--data-dir", str(data_dir))
    assert code == 0 and "not running" not in err
    _run(capsys, "remove", "ann", "--data-dir", str(data_dir))
    assert running_serve == [USERS_CHANGED_PATH, USERS_CHANGED_PATH]


def test_in_a_fleet_users_live_in_redis(capsys: pytest.CaptureFixture[str], data_dir: Path,
                                        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, redis_server.url)
    _, out, _ = _run(capsys, "add", "ann", "--url", "http://x", "--data-dir", str(data_dir))
    key = _secrets(out)["API key"]
    found = open_store(data_dir, redis_server.url).credential(secret_digest(key))
    assert found is not None and found.user.name == "ann"
    assert not data_dir.exists() or not any(data_dir.glob("users.sqlite3"))
    code, out, _ = _run(capsys, "list", "--data-dir", str(data_dir))
    assert code == 0 and "ann" in out
    redis_server.stop()
    code, _, err = _run(capsys, "remove", "ann", "--data-dir", str(data_dir))
    assert code == 2 and "Redis cannot be reached" in err
