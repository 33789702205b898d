"""Router mode on the launcher side: model names, the preset it writes, argv, and options refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_launcher.cli import _parser
from llama_launcher.errors import LauncherError
from llama_launcher.launch_spec import LaunchSpec
from llama_launcher.models import dir_names, parse_model_args, preset_names
from llama_launcher.router_launch import is_router, router_spec
from llama_launcher.server_args import RouterSource, ServerOptions, build_argv, validate_extra_args


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "Small-Model.gguf"
    path.write_bytes(b"GGUF" + bytes(8))
    return path


def _args(*argv: str):
    return _parser().parse_args(["serve", *argv])


def test_model_list_names_and_defaults(gguf: Path) -> None:
    entries = parse_model_args([f"alpha={gguf}", str(gguf)])
    assert [e.name for e in entries] == ["alpha", "small-model"]
    with pytest.raises(LauncherError, match="given twice"):
        parse_model_args([f"a={gguf}", f"a={gguf}"])
    with pytest.raises(LauncherError, match="must match"):
        parse_model_args([f"bad name={gguf}"])


def test_one_model_is_not_a_router_and_two_are(gguf: Path) -> None:
    assert not is_router(_args("--model", str(gguf)))
    assert is_router(_args("--model", str(gguf), "--model", f"b={gguf}"))


def test_a_list_becomes_a_private_preset_and_a_router_argv(gguf: Path, tmp_path: Path) -> None:
    args = _args("--model", f"alpha={gguf}", "--model", f"beta={gguf}", "--models-max", "1", "--ctx", "512")
    spec = router_spec(args, "/bin/llama-server", [], None)
    assert (spec.alias, spec.models) == ("alpha", ["alpha", "beta"])
    runtime = tmp_path / "rt"
    runtime.mkdir()
    spec.write(runtime / "launch.json")
    ready = LaunchSpec.read(runtime / "launch.json").materialise(runtime)
    assert preset_names(Path(ready.router_path or "")) == ["alpha", "beta"]
    argv = build_argv(ready.server_options(), unix_socket=runtime / "llama.sock")
    assert argv[1:3] == ["--models-preset", str(runtime / "models.ini")]
    assert "--alias" not in argv and "--model" not in argv
    assert argv[argv.index("--models-max") + 1] == "1" and argv[argv.index("--ctx-size") + 1] == "512"


def test_per_model_options_are_refused_globally_in_router_mode(gguf: Path) -> None:
    with pytest.raises(LauncherError, match="per model"):
        router_spec(_args("--model", str(gguf), "--model", f"b={gguf}", "--mmproj", str(gguf)), "x", [], None)
    with pytest.raises(LauncherError, match="NAME=PATH"):
        router_spec(_args("--model", str(gguf), "--model", f"b={gguf}", "--model-alias", "x"), "x", [], None)
    with pytest.raises(Exception, match="models-preset"):
        validate_extra_args(["--models-preset", "x.ini"])


def test_a_folder_is_named_like_llama_server_names_it(tmp_path: Path) -> None:
    (tmp_path / "b-model.gguf").write_bytes(b"GGUF")
    (tmp_path / "mmproj-b.gguf").write_bytes(b"GGUF")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-dir" / "weights.gguf").write_bytes(b"GGUF")
    (tmp_path / "notes.txt").write_text("x")
    assert dir_names(tmp_path) == ["a-dir", "b-model"]


def test_router_options_build_no_model_flag() -> None:
    options = ServerOptions(binary=Path("/b"), model=None, alias="x", router=RouterSource("dir", Path("/m")))
    assert build_argv(options, unix_socket=None)[:3] == ["/b", "--models-dir", "/m"]
