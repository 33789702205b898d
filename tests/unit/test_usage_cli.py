"""`llama-direct usage`: the ledger as a table or JSON lines, per user, from the data dir or the fleet's Redis;
and HAProxy refusing to take the gate's place in a deployment with token budgets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from redis_server import RedisServer

from llama_direct.budgets import Budget, Reservation, UsageReport, day_name, day_of, start_deadline
from llama_direct.user_store import open_store
from llama_direct.users import Limits, User, new_secrets, new_user
from llama_launcher import cli


def seed(data_dir: Path, redis_url: str | None = None) -> User:
    """Ann (100 tokens a day) with one settled stream, and the owner with one baseline request."""
    store = open_store(data_dir, redis_url)
    try:
        now = time.time()
        ann = new_user("ann", Limits(tokens_per_day=100), now)
        store.add(ann, new_secrets().records())
        store.add(new_user("bob", Limits(), now), new_secrets().records())
        held = Reservation("j1", ann.id, "smol", "chat", "direct", 0, 0, 0, start_deadline(int(now) + 60), now)
        assert store.reserve(held, Budget(100, None), 80, now) == 80
        store.report([UsageReport("j1", ann.id, "smol", "chat", "direct", "ended", 12, 30)], now)
        store.report([UsageReport("j2", "local", "smol", "responses", "baseline", "ended", 4, 9)], now)
        return ann
    finally:
        store.close()


def test_the_table_and_the_remaining_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed(tmp_path)
    assert cli.main(["usage", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DAY", "USER", "MODEL", "ROUTE", "LANE", "REQUESTS", "PROMPT", "COMPLETION", "UNSEEN"]
    today = day_name(day_of(time.time()))
    assert sorted(line.split() for line in lines[1:]) == [
        [today, "ann", "smol", "chat", "direct", "1", "12", "30", "0"],
        [today, "local", "smol", "responses", "baseline", "1", "4", "9", "0"]]
    assert cli.main(["usage", "--data-dir", str(tmp_path), "--user", "ANN"]) == 0
    out = capsys.readouterr().out
    assert "local" not in out and "left: 70 today" in out


def test_json_lines_name_the_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = seed(tmp_path)
    assert cli.main(["usage", "--data-dir", str(tmp_path), "--json", "--since", "2020-01-01"]) == 0
    rows = sorted((json.loads(line) for line in capsys.readouterr().out.splitlines()), key=lambda row: row["user"])
    assert [(row["user"], row["user_id"], row["completion_tokens"]) for row in rows] == [
        ("ann", ann.id, 30), ("local", "local", 9)]
    assert cli.main(["usage", "--data-dir", str(tmp_path), "--json", "--user", "local"]) == 0
    assert [json.loads(line)["route"] for line in capsys.readouterr().out.splitlines()] == ["responses"]


@pytest.mark.parametrize(("argv", "said"), [
    (["--since", "yesterday"], "YYYY-MM-DD"), (["--since", "2999-01-01"], "after today"),
    (["--user", "nobody"], "no user named 'nobody'"),
])
def test_what_it_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str) -> None:
    seed(tmp_path)
    assert cli.main(["usage", "--data-dir", str(tmp_path), *argv]) == 2
    assert said in capsys.readouterr().err


def test_in_a_fleet_it_reads_the_shared_ledger(tmp_path: Path, redis_server: RedisServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    seed(tmp_path / "elsewhere", redis_server.url)
    url_file = tmp_path / "redis-url"
    url_file.write_text(redis_server.url)
    assert cli.main(["usage", "--data-dir", str(tmp_path), "--redis-url-file", str(url_file), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert not (tmp_path / "users.db").exists()


def haproxy_argv(tmp_path: Path) -> list[str]:
    key = tmp_path / "key.pem"
    key.write_text("unused: the render is refused before any key is read\n")
    return ["haproxy-config", "--upstream", "127.0.0.1:9001", "--public-key-file", str(key), "--audience", "fleet",
            "--issuer", "broker-a", "--data-dir", str(tmp_path), "--output", str(tmp_path / "haproxy.cfg")]


def test_haproxy_in_the_gates_place_refuses_a_deployment_with_budgets(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(haproxy_argv(tmp_path)) == 0  # no users file: nothing to settle
    assert not (tmp_path / "users.db").exists()
    store = open_store(tmp_path)
    store.add(new_user("bob", Limits(max_tokens=10), time.time()), ())
    store.close()
    assert cli.main(haproxy_argv(tmp_path)) == 0  # users, but no token budget
    seed(tmp_path / "other")
    store = open_store(tmp_path)
    store.add(new_user("ann", Limits(tokens_per_minute=500), time.time()), ())
    store.close()
    (tmp_path / "haproxy.cfg").unlink()
    assert cli.main(haproxy_argv(tmp_path)) == 2
    assert "only the gate reads what a stream used" in capsys.readouterr().err
    assert not (tmp_path / "haproxy.cfg").exists()
    edge = ["haproxy-config", "--gate", "127.0.0.1:8000", "--data-dir", str(tmp_path)]
    assert cli.main([*edge, "--output", str(tmp_path / "edge.cfg")]) == 0  # at the gate's edge: the gate settles
