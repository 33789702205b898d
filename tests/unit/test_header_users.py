"""Users named by an authenticating proxy (`--trusted-user-header`): the pure parts (whose header is
believed, what the broker is sent, how a name is read and refused, the bound on users made from it),
and the broker taking the user from the gate's forwarded header, with the store as it really is."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from redis_server import RedisServer
from starlette.datastructures import Headers

from broker.accounts import header_user
from llama_direct.header_users import (
    FORWARDED_USER_HEADER,
    HeaderUsers,
    HeaderUsersDocument,
    check_room,
    header_name,
    header_users_document,
    header_users_from_document,
    loopback_proxies,
    name_from_header,
)
from llama_direct.refusals import RequestRefusal
from llama_direct.tokens import OWNER
from llama_direct.typed_json import check_document
from llama_direct.user_store import Admit, SqliteUserStore
from llama_direct.user_store_redis import RedisUserStore
from llama_direct.users import Limits, SecretRecord, User, UserError, new_secrets, new_user
from llama_launcher.cli import serve_args
from llama_launcher.errors import LauncherError
from llama_launcher.gate.admission import forwarded_user
from llama_launcher.gate.outgoing import broker_request
from llama_launcher.gate.request_reader import Request
from llama_launcher.proxy_users import proxy_user_settings
from llama_launcher.users_cli import parse_limits

TRUSTED = frozenset({"10.0.0.1", "127.0.0.1"})
HEADER = b"x-remote-user"


# -- whose header is believed (the gate) --------------------------------------------------------

@pytest.mark.parametrize(("peer", "header", "expected"), [
    ("10.0.0.1", HEADER, [b"ann"]),           # a trusted proxy names the user
    ("127.0.0.1", HEADER, [b"ann"]),          # loopback, because it was named
    ("10.0.0.2", HEADER, []),                 # anyone else: nothing, whatever they sent
    ("::1", HEADER, []),                      # loopback is not trusted unless named
    (None, HEADER, []),                       # a unix socket has no TCP peer
    ("10.0.0.1", None, []),                   # no header configured: nothing from anyone
])
def test_only_a_trusted_peer_names_the_user(peer: str | None, header: bytes | None, expected: list[bytes]) -> None:
    headers = [(b"host", b"box"), (b"x-remote-user", b"ann"), (b"x-other-user", b"bob")]
    assert forwarded_user(peer, TRUSTED, header, headers) == expected


def test_a_trusted_proxy_s_repeated_header_is_passed_on_whole_for_the_broker_to_refuse() -> None:
    headers = [(b"X-Remote-User", b"ann"), (b"x-remote-user", b"bob")]
    assert forwarded_user("10.0.0.1", TRUSTED, HEADER, headers) == [b"ann", b"bob"]


def _request(*headers: tuple[bytes, bytes]) -> Request:
    raw = [(b"Host", b"box"), *headers]
    return Request(b"GET", b"/v1/me", b"HTTP/1.1", raw, [(n.lower(), v) for n, v in raw])


def test_the_broker_is_sent_only_the_gate_s_own_user_header() -> None:
    forged = _request((b"X-Remote-User", b"admin"), (b"X-Llama-Direct-User", b"admin"),
                      (b"x-llama-direct-user", b"root"))
    head = broker_request(forged, client="10.0.0.2", proto=b"http", length=None, user_header=HEADER, user=[])
    assert b"admin" not in head and b"root" not in head
    assert b"x-remote-user" not in head.lower() and FORWARDED_USER_HEADER.encode() not in head.lower()

    relayed = broker_request(forged, client="10.0.0.9", proto=b"http", length=None, user_header=HEADER,
                             user=[b"ann"])
    lines = relayed.lower().split(b"\r\n")
    assert [line for line in lines if b"user" in line] == [FORWARDED_USER_HEADER.encode() + b": ann"]


def test_without_the_flag_a_forged_forwarded_header_is_still_dropped() -> None:
    head = broker_request(_request((b"X-Llama-Direct-User", b"admin")), client=None, proto=b"http", length=None)
    assert b"admin" not in head


# -- the flags ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["X-Remote-User", "Remote-User", "tailscale-user-login", "X-Forwarded-Email"])
def test_a_header_name_is_an_http_token_in_lower_case(name: str) -> None:
    assert header_name(name) == name.lower()


@pytest.mark.parametrize("name", ["", "x remote", "x:user", "Authorization", "Cookie", "X-Forwarded-For", "Host",
                                  FORWARDED_USER_HEADER, "x" * 65, "X-Ümlaut"])
def test_a_header_name_that_means_something_else_or_cannot_be_sent_is_refused(name: str) -> None:
    with pytest.raises(UserError):
        header_name(name)


def test_default_limits_are_users_add_s_flags_in_one_string() -> None:
    assert parse_limits("--models a,b --max-tokens 512 --streams 2") == Limits(models=("a", "b"), max_tokens=512,
                                                                               streams=2)
    assert parse_limits("") == Limits()


@pytest.mark.parametrize("text", ["--max-tokens x", "--max-tokens 0", "--bogus 1", "--models a,a", "'unclosed"])
def test_bad_default_limits_are_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--default-limits"):
        parse_limits(text)


def test_loopback_proxies_are_found_for_the_warning() -> None:
    trusted = ["127.0.0.1", "10.0.0.1", "::1", "::ffff:127.0.0.2", "192.0.2.7"]
    assert loopback_proxies(trusted) == ("127.0.0.1", "::1", "::ffff:127.0.0.2")


# -- names and the bound (the broker) -------------------------------------------------------------

def _latin1(text: str) -> str:
    """A UTF-8 header value as the broker's framework reads it."""
    return text.encode("utf-8").decode("latin-1")


@pytest.mark.parametrize(("value", "name"), [("Ann", "ann"), ("  ANN ", "ann"), (_latin1("Ａｎｎ"), "ann"),
                                             ("ann@example.com", "ann@example.com"), (_latin1("Zoë"), "zoë")])
def test_a_header_name_is_normalised_as_users_add_does(value: str, name: str) -> None:
    assert name_from_header([value]) == name


@pytest.mark.parametrize(("values", "variant_text"), [
    (["ann", "bob"], "more than once"),
    (["\xff\xfe"], "not UTF-8"),
    ([""], "letters, digits"),
    (["ann smith"], "letters, digits"),
    (["a" * 65], "letters, digits"),
    (["ann\tbob"], "letters, digits"),
    ([_latin1("ann\u202ebob")], "letters, digits"),
])
def test_a_header_that_names_nobody_is_refused(values: list[str], variant_text: str) -> None:
    with pytest.raises(RequestRefusal) as refused:
        name_from_header(values)
    assert refused.value.code == "bad_user_header" and refused.value.status == 403
    assert variant_text in refused.value.message


def test_the_bound_refuses_past_max_users() -> None:
    config = HeaderUsers(Limits(), max_users=2)
    check_room(1, config)
    with pytest.raises(RequestRefusal) as refused:
        check_room(2, config)
    assert refused.value.code == "too_many_header_users" and "2 were" in refused.value.message


@pytest.mark.parametrize("bad", [0, -1, True, 10**7])
def test_the_bound_itself_is_checked(bad: int) -> None:
    with pytest.raises(UserError):
        HeaderUsers(Limits(), max_users=bad)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteUserStore]:
    made = SqliteUserStore(tmp_path / "users.sqlite3")
    yield made
    made.close()


def _forwarded(value: str) -> Headers:
    return Headers(raw=[(FORWARDED_USER_HEADER.encode(), value.encode("utf-8"))])


def test_a_header_user_is_made_once_with_the_default_limits_and_no_secrets(store: SqliteUserStore) -> None:
    config = HeaderUsers(Limits(max_tokens=16, streams=1), max_users=5)
    ann = header_user(store, _forwarded("Ann"), config, time.time())
    assert ann is not None and ann.name == "ann" and ann.limits == Limits(max_tokens=16, streams=1)
    assert ann.id != OWNER and ann.id.startswith("u-")
    assert header_user(store, _forwarded("ANN"), config, time.time()) == ann
    (listed,) = store.users()
    assert listed.user == ann and listed.fingerprints == {}


def test_without_the_setting_the_header_is_never_read(store: SqliteUserStore) -> None:
    assert header_user(store, _forwarded("ann"), None, time.time()) is None
    assert store.users() == []


def test_made_users_are_bounded_but_known_ones_still_pass(store: SqliteUserStore) -> None:
    config = HeaderUsers(Limits(), max_users=2)
    added = new_user("carol", Limits(max_tokens=4), time.time())
    store.add(added, new_secrets().records())  # made by `users add`: not counted, and found by name
    for name in ("ann", "bob"):
        assert header_user(store, _forwarded(name), config, time.time()) is not None
    with pytest.raises(RequestRefusal) as refused:
        header_user(store, _forwarded("dave"), config, time.time())
    assert refused.value.code == "too_many_header_users"
    assert store.user("dave") is None
    assert header_user(store, _forwarded("Bob"), config, time.time()) is not None
    assert header_user(store, _forwarded("carol"), config, time.time()) == added


@pytest.mark.parametrize("limits", [Limits(), Limits(models=("a", "b"), tokens_per_day=100, tokens_per_minute=10,
                                                      streams=2, max_tokens=8)])
def test_header_users_travel_to_the_broker_as_a_typed_document(limits: Limits) -> None:
    users = HeaderUsers(limits, max_users=7)
    document = json.loads(json.dumps(header_users_document(users)))  # as broker.json holds it
    assert header_users_from_document(check_document(document, HeaderUsersDocument, name="broker.json")) == users


# -- serve's flags -------------------------------------------------------------------------------

def test_serve_passes_the_header_to_the_gate_and_the_header_users_to_the_broker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = serve_args(["--trusted-proxy", "10.0.0.5", "--trusted-user-header", "X-Forwarded-User",
                       "--default-limits", "--max-tokens 512 --streams 2", "--max-header-users", "50"])
    header, users = proxy_user_settings(args)
    assert header == "x-forwarded-user" and users is not None
    assert header_users_from_document(users) == HeaderUsers(Limits(max_tokens=512, streams=2), max_users=50)
    assert "warning" not in capsys.readouterr().err
    assert proxy_user_settings(serve_args([])) == (None, None)


def test_serve_warns_of_a_loopback_proxy_named_for_header_users(capsys: pytest.CaptureFixture[str]) -> None:
    args = serve_args(["--trusted-proxy", "127.0.0.1", "--trusted-user-header", "Remote-User"])
    header, users = proxy_user_settings(args)
    assert header == "remote-user" and users is not None
    assert header_users_from_document(users) == HeaderUsers(Limits())
    assert "127.0.0.1 is on this machine" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["--trusted-user-header", "Remote-User"], "needs --trusted-proxy"),
    (["--default-limits", "--max-tokens 5"], "need --trusted-user-header"),
    (["--trusted-proxy", "10.0.0.5", "--max-header-users", "5"], "need --trusted-user-header"),
])
def test_serve_refuses_header_flags_that_cannot_work(argv: list[str], says: str) -> None:
    with pytest.raises(LauncherError, match=says):
        proxy_user_settings(serve_args(argv))


@pytest.mark.parametrize("argv", [["--trusted-user-header", "Authorization"], ["--default-limits", "--streams=0"],
                                  ["--max-header-users", "0"]])
def test_bad_header_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        serve_args(argv)


class _Interleaved(RedisUserStore):
    """A broker on the fleet's Redis whose count of header users is followed, before its own add lands,
    by another broker's whole creation (`between`, run once): the race two brokers can really run."""

    def __init__(self, url: str, between: Callable[[], object]) -> None:
        super().__init__(RedisUserStore.from_url(url)._redis)
        self._between: Callable[[], object] | None = between

    def add(self, user: User, secrets: Sequence[SecretRecord], admit: Admit | None = None) -> None:
        def late(made: int) -> None:
            between, self._between = self._between, None
            if between is not None:
                between()
            if admit is not None:
                admit(made)

        super().add(user, secrets, late)


def test_two_brokers_on_one_redis_never_make_a_header_user_past_the_bound(redis_server: RedisServer) -> None:
    config = HeaderUsers(Limits(), max_users=1)
    other = RedisUserStore.from_url(redis_server.url)
    racing = _Interleaved(redis_server.url, lambda: header_user(other, _forwarded("bob"), config, time.time()))
    try:
        with pytest.raises(RequestRefusal) as refused:
            header_user(racing, _forwarded("ann"), config, time.time())
        assert refused.value.code == "too_many_header_users"
        assert [listed.user.name for listed in other.users()] == ["bob"]
    finally:
        racing.close()
        other.close()
