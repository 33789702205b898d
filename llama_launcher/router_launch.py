"""`serve` in router mode: many models behind one llama-server router on the private unix socket.

Router mode starts when `--models-dir`, `--models-preset` or more than one `--model` is given; one
`--model` (or none) keeps today's single llama-server. Options split like this:

- global (router flags, which llama-server hands to every child; a preset section's own value wins):
  `--ctx`, `--parallel`, `--chat-template`, `--max-tokens`, and extra `-- ...` arguments;
- per model (a preset section, or a `--models-dir` sub-folder): `mmproj`, and any other option, so
  `--mmproj` and `--model-alias` are refused here (a model's name is its `NAME=`, section or file name).
"""

from __future__ import annotations

import argparse

from llama_launcher.errors import LauncherError
from llama_launcher.launch_spec import LaunchSpec
from llama_launcher.models import dir_names, parse_model_args, preset_names


def is_router(args: argparse.Namespace) -> bool:
    return bool(args.models_dir or args.models_preset or len(args.model) > 1)


def router_spec(args: argparse.Namespace, binary: str, extra: list[str], template: str | None) -> LaunchSpec:
    """The launch spec of a router: its source, every model's name, the default first."""
    sources = [bool(args.models_dir), bool(args.models_preset), bool(args.model)]
    if sum(sources) > 1:
        raise LauncherError("give one of --models-dir, --models-preset or a list of --model, not several")
    if args.mmproj:
        raise LauncherError("--mmproj is per model in router mode: put `mmproj = PATH` in the model's preset "
                            "section, or the projector next to the model in a --models-dir sub-folder")
    if args.model_alias:
        raise LauncherError("--model-alias names one model; in router mode use --model NAME=PATH")
    if args.models_max is not None:
        if args.models_max < 1:
            raise LauncherError("--models-max must be at least 1")
        extra = [*extra, "--models-max", str(args.models_max)]
    common = {
        "mode": "launch", "binary": binary, "max_tokens": args.max_tokens, "ctx_size": args.ctx,
        "parallel": args.parallel, "chat_template_file": template, "extra_args": extra,
    }
    if args.models_dir:
        path = args.models_dir.resolve()
        names = dir_names(path)
        return LaunchSpec(**common, router_kind="dir", router_path=str(path), alias=names[0], models=names)
    if args.models_preset:
        path = args.models_preset.resolve()
        names = preset_names(path)
        return LaunchSpec(**common, router_kind="preset", router_path=str(path), alias=names[0], models=names)
    entries = parse_model_args(args.model)
    return LaunchSpec(
        **common, router_kind="list", alias=entries[0].name, models=[entry.name for entry in entries],
        model_paths={entry.name: str(entry.path) for entry in entries},
    )
