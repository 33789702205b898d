from pathlib import Path

import pytest

from llama_launcher.errors import ArgumentRefused
from llama_launcher.server_args import (
    ListenAddress,
    ServerOptions,
    build_argv,
    parse_listening_line,
    validate_extra_args,
)

OPTIONS = ServerOptions(binary=Path("/opt/llama-server"), model=Path("/m/model.gguf"), alias="small", max_tokens=64)


@pytest.mark.parametrize(
    "arg",
    ["--api-key", "--api-key=abc", "--api-key-file", "--host", "--host=0.0.0.0", "--port", "--port=9",
     "--alias", "-a", "--api-prefix=/x", "--path", "--ssl-key-file", "--ssl-cert-file", "--reuse-port",
     "-n", "--n-predict=5", "--predict", "-m", "--model=x"],
)
def test_owned_flags_are_refused_in_any_spelling(arg: str) -> None:
    with pytest.raises(ArgumentRefused) as refused:
        validate_extra_args(["--threads", "2", arg, "value"])
    assert str(refused.value).startswith(f"refusing extra llama-server argument {arg.split('=')[0]}:")


def test_other_flags_pass_in_order() -> None:
    assert validate_extra_args(["--threads", "2", "--temp=0.5"]) == ("--threads", "2", "--temp=0.5")


def test_argv_uses_the_unix_socket_and_never_carries_a_key() -> None:
    argv = build_argv(OPTIONS, unix_socket=Path("/tmp/ld-x/llama.sock"))
    assert argv[:5] == ["/opt/llama-server", "--model", "/m/model.gguf", "--alias", "small"]
    assert argv[argv.index("--host") + 1] == "/tmp/ld-x/llama.sock"
    assert "--port" not in argv
    assert argv[argv.index("--n-predict") + 1] == "64"
    assert not any("key" in a for a in argv)


def test_argv_without_socket_support_binds_port_zero_on_loopback() -> None:
    argv = build_argv(OPTIONS, unix_socket=None)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "0"


def test_argv_carries_options_and_extra_args_last() -> None:
    options = ServerOptions(
        binary=Path("/b"), model=Path("/m"), alias="a", ctx_size=4096, parallel=3,
        chat_template_file=Path("/t.jinja"), mmproj=Path("/p.gguf"), extra_args=("--threads", "2"),
    )
    argv = build_argv(options, unix_socket=None)
    for flag, value in (("--ctx-size", "4096"), ("--parallel", "3"), ("--chat-template-file", "/t.jinja"),
                        ("--mmproj", "/p.gguf")):
        assert argv[argv.index(flag) + 1] == value
    assert argv[-2:] == ["--threads", "2"]


def test_extra_args_are_checked_when_argv_is_built() -> None:
    options = ServerOptions(binary=Path("/b"), model=Path("/m"), alias="a", extra_args=("--api-key", "k"))
    with pytest.raises(ArgumentRefused):
        build_argv(options, unix_socket=None)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0.00.352.298 I srv  llama_server: listening on unix:///tmp/ld-7y/llama.sock",
         ListenAddress(unix_path="/tmp/ld-7y/llama.sock")),
        ("main: server is listening on http://127.0.0.1:40687 - starting the main loop",
         ListenAddress(host="127.0.0.1", port=40687)),
        ("listening on http://[::1]:8080", ListenAddress(host="::1", port=8080)),
        ("srv  load_model: loading model", None),
        ("listening on nothing", None),
    ],
)
def test_listening_line(line: str, expected: ListenAddress | None) -> None:
    assert parse_listening_line(line) == expected
