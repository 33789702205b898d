"""Many models on one box: which models a router serves, under which names, and the default one.

Pure apart from reading the user's preset file or listing the models folder. llama-server's router
(`--models-preset FILE` or `--models-dir DIR`) names each model by its preset section, or by its file
name without `.gguf` (or its sub-folder) in a folder; clients only ever see those names, never a path.
A list of `--model [NAME=]PATH` becomes a preset file the launcher writes into the private runtime dir.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from pathlib import Path

from llama_direct.refusals import MODEL_NAME
from llama_launcher.errors import LauncherError
from llama_launcher.model import check_gguf

GLOBAL_SECTION = "*"
"""llama-server's preset section whose options apply to every model."""

PRESET_FILE = "models.ini"
_MMPROJ = re.compile(r"mmproj", re.IGNORECASE)


@dataclass(frozen=True)
class ModelEntry:
    """One `--model [NAME=]PATH`: a public name and the file behind it."""

    name: str
    path: Path


def parse_model_args(values: list[str]) -> list[ModelEntry]:
    """`NAME=PATH` or `PATH` (named by its file stem, lower-cased); names unique and well-formed."""
    entries: list[ModelEntry] = []
    for value in values:
        name, sep, path_text = value.partition("=")
        if not sep or "/" in name or not name:
            name, path_text = Path(value).stem.lower(), value
        if not MODEL_NAME.fullmatch(name):
            raise LauncherError(f"--model {value}: the name must match [A-Za-z0-9_.:-]{{1,64}}")
        if any(entry.name == name for entry in entries):
            raise LauncherError(f"--model {value}: the name {name!r} is given twice")
        if any(char in path_text for char in "\r\n;#"):
            raise LauncherError(f"--model {name}: the path must not hold a line break, ';' or '#'")
        entries.append(ModelEntry(name, check_gguf(Path(path_text).resolve())))
    return entries


def preset_text(entries: list[ModelEntry]) -> str:
    """llama-server's preset INI for a list of models: one section each, only `model = PATH`.

    The global options (`--ctx`, `--chat-template`, ...) are router flags, which reach every child.
    """
    lines: list[str] = []
    for entry in entries:
        lines += [f"[{entry.name}]", f"model = {entry.path}", ""]
    return "\n".join(lines)


def preset_names(path: Path) -> list[str]:
    """The model names of a preset file, in file order (the first is the default); checked here."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error, UnicodeDecodeError) as error:
        raise LauncherError(f"--models-preset {path}: cannot be read as an INI file ({type(error).__name__})") from None
    names = [name for name in parser.sections() if name != GLOBAL_SECTION]
    return _checked(names, f"--models-preset {path}")


def dir_names(path: Path) -> list[str]:
    """The names llama-server gives the models of a folder, sorted (the first is the default).

    The same rule as llama.cpp's `load_from_models_dir`: `NAME.gguf` files (not a projector), and
    sub-folders holding a `.gguf`.
    """
    if not path.is_dir():
        raise LauncherError(f"--models-dir {path}: not a folder")
    names: list[str] = []
    for entry in path.iterdir():
        if entry.is_dir() and any(child.suffix == ".gguf" for child in entry.iterdir() if child.is_file()):
            names.append(entry.name)
        elif entry.is_file() and entry.suffix == ".gguf" and not _MMPROJ.search(entry.name):
            names.append(entry.name.replace(".gguf", ""))
    return _checked(sorted(names), f"--models-dir {path}")


def _checked(names: list[str], where: str) -> list[str]:
    if not names:
        raise LauncherError(f"{where}: no models found")
    for name in names:
        if not MODEL_NAME.fullmatch(name):
            raise LauncherError(f"{where}: the model name {name!r} must match [A-Za-z0-9_.:-]{{1,64}}")
    return names
