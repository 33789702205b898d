"""The slow, cached steps that ``serve``, ``setup`` and the tests share: find, build or prove llama-server.

A binary is used only once it is known to run here. The cached build is proven once, right after it is
built (and again if that proof failed earlier); a binary the user names, or one on ``PATH``, is proven
by ``setup`` and ``doctor`` each time they run, and is otherwise the user's responsibility.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from llama_launcher import build, model, smoke
from llama_launcher.binary import Found, resolve
from llama_launcher.progress import Progress


def ensure_llama_server(
    explicit: str | None, cache: Path, extra_args: Sequence[str] = (), env: Mapping[str, str] = os.environ
) -> Found:
    """The binary to run: the user's choice, ``PATH``, or the cached build for this CPU, built and
    proven first if needed (with the same extra arguments ``serve`` will pass)."""
    plan = build.plan_build()
    cached = build.build_dir(cache, plan.version) / "llama-server"

    def cache_good() -> Path | None:
        return cached if build.cache_state(cache, plan) == "good" else None

    found = resolve(explicit, env, shutil.which, cache_good)
    if found is not None:
        return found
    if build.cache_state(cache, plan) in ("missing", "stale"):
        build.build(cache, plan)
    prove(Found(cached, "cache"), cache, extra_args)
    build.mark_proven(cache, plan, extra_args)
    return Found(cached, "cache")


def prove(found: Found, cache: Path, extra_args: Sequence[str]) -> None:
    """One token from the default model, or :class:`~llama_launcher.errors.SmokeFailed`."""
    model_path = model.ensure_default_model(cache)
    progress = Progress("checking llama-server")
    progress.say(f"loading the default model and generating one token with {found.path}", force=True)
    smoke.prove(found.path, model_path, extra_args, found.source)
    progress.say("it runs", force=True)
