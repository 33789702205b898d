import os
from collections.abc import Callable
from pathlib import Path

import pytest

from llama_launcher.binary import resolve
from llama_launcher.build import build_dir, missing_build_tools
from llama_launcher.errors import BinaryNotFound


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    return {
        "explicit": _exe(tmp_path / "explicit" / "llama-server"),
        "env": _exe(tmp_path / "env" / "llama-server"),
        "path": _exe(tmp_path / "path" / "llama-server"),
        "cache": tmp_path / "cache",
    }


def cached_binary(cache: Path) -> Path:
    return build_dir(cache) / "llama-server"


def _good(path: Path) -> Callable[[], Path | None]:
    """The cache as resolve sees it: the binary when the build is current and proven."""
    return lambda: path if path.is_file() else None


def test_explicit_flag_wins(tree: dict[str, Path]) -> None:
    found = resolve(str(tree["explicit"]), {"LLAMA_SERVER": str(tree["env"])}, lambda _: str(tree["path"]),
                    _good(cached_binary(tree["cache"])))
    assert found is not None and (found.path, found.source) == (tree["explicit"], "--llama-server")


def test_environment_comes_second(tree: dict[str, Path]) -> None:
    cache = _good(cached_binary(tree["cache"]))
    found = resolve(None, {"LLAMA_SERVER": str(tree["env"])}, lambda _: str(tree["path"]), cache)
    assert found is not None and (found.path, found.source) == (tree["env"], "LLAMA_SERVER")


def test_path_comes_third(tree: dict[str, Path]) -> None:
    _exe(cached_binary(tree["cache"]))
    found = resolve(None, {}, lambda _: str(tree["path"]), _good(cached_binary(tree["cache"])))
    assert found is not None and (found.path, found.source) == (tree["path"], "PATH")


def test_cache_comes_last(tree: dict[str, Path]) -> None:
    cached = _exe(cached_binary(tree["cache"]))
    found = resolve(None, {}, lambda _: None, _good(cached_binary(tree["cache"])))
    assert found is not None and (found.path, found.source) == (cached, "cache")


def test_nothing_found_means_build(tree: dict[str, Path]) -> None:
    assert resolve(None, {}, lambda _: None, _good(cached_binary(tree["cache"]))) is None


def test_a_cached_build_that_is_not_current_and_proven_is_not_found(tree: dict[str, Path]) -> None:
    _exe(cached_binary(tree["cache"]))
    assert resolve(None, {}, lambda _: None, lambda: None) is None


def test_cache_is_keyed_by_version(tmp_path: Path) -> None:
    assert build_dir(tmp_path, "1.2.3") == tmp_path / "llama-server-1.2.3"


@pytest.mark.parametrize("bad", ["missing", "not-executable"])
def test_a_wrong_explicit_choice_is_an_error_not_a_fallback(tree: dict[str, Path], bad: str) -> None:
    path = tree["cache"] / "nope"
    if bad == "not-executable":
        path.parent.mkdir(parents=True)
        path.write_text("x")
        os.chmod(path, 0o644)
    with pytest.raises(BinaryNotFound, match=r"^--llama-server .*: not an executable file$"):
        resolve(str(path), {}, lambda _: str(tree["path"]), _good(cached_binary(tree["cache"])))
    with pytest.raises(BinaryNotFound, match=r"^LLAMA_SERVER=.*: not an executable file$"):
        resolve(None, {"LLAMA_SERVER": str(path)}, lambda _: str(tree["path"]), _good(cached_binary(tree["cache"])))


def test_missing_build_tools_are_named() -> None:
    assert missing_build_tools(lambda name: None) == ["cmake", "a C++ compiler (g++)"]
    assert missing_build_tools(lambda name: f"/usr/bin/{name}") == []
