"""Pure pieces of launching llama-server: which flags the launcher owns, argv, the listening line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from llama_launcher.errors import ArgumentRefused

# Flags whose value decides who can reach llama-server, under which name, or how much it may
# generate. The launcher sets them; a user's extra argument must not quietly override them.
OWNED_FLAGS: dict[str, str] = {
    "--host": "llama-server listens on a private unix socket chosen by the launcher",
    "--port": "llama-server listens on a private unix socket chosen by the launcher",
    "--api-key": "the launcher generates llama-server's key and never puts it on a command line",
    "--api-key-file": "the launcher generates llama-server's key and never puts it on a command line",
    "--alias": "the launcher names the model so that no file path reaches a browser; use --model-alias",
    "-a": "the launcher names the model so that no file path reaches a browser; use --model-alias",
    "--api-prefix": "the gate expects llama-server's routes at their usual paths",
    "--path": "llama-server's static files are not served through the gate",
    "--ssl-key-file": "TLS belongs on the public port: use --tls-cert and --tls-key",
    "--ssl-cert-file": "TLS belongs on the public port: use --tls-cert and --tls-key",
    "--reuse-port": "the launcher owns llama-server's listening socket",
    "-m": "use --model",
    "--model": "use --model",
    "-n": "the launcher sets the generation cap; use --max-tokens",
    "--predict": "the launcher sets the generation cap; use --max-tokens",
    "--n-predict": "the launcher sets the generation cap; use --max-tokens",
    "--models-preset": "use llama-direct's --models-preset",
    "--models-dir": "use llama-direct's --models-dir",
}

_LISTENING = re.compile(r"listening on (unix://(?P<path>\S+)|https?://(?P<host>[^\s:/]+|\[[^\]]+\]):(?P<port>\d+))")


@dataclass(frozen=True)
class RouterSource:
    """What a router serves: llama-server's own `--models-preset` INI file or `--models-dir` folder."""

    kind: str  # "preset" or "dir"
    path: Path

    def flag(self) -> str:
        return "--models-preset" if self.kind == "preset" else "--models-dir"


@dataclass(frozen=True)
class ServerOptions:
    binary: Path
    model: Path | None
    alias: str
    max_tokens: int = 2048
    ctx_size: int | None = None
    parallel: int | None = None
    chat_template_file: Path | None = None
    mmproj: Path | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    router: RouterSource | None = None
    """Set: llama-server runs as a router over many models; `model` and `alias` are then unused."""


@dataclass(frozen=True)
class ListenAddress:
    unix_path: str | None = None
    host: str | None = None
    port: int | None = None


def validate_extra_args(args: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Refuse owned flags in any spelling (``--x v`` and ``--x=v``), naming the flag and why."""
    for arg in args:
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name in OWNED_FLAGS:
            raise ArgumentRefused(f"refusing extra llama-server argument {name}: {OWNED_FLAGS[name]}")
    return tuple(args)


def build_argv(options: ServerOptions, *, unix_socket: Path | None) -> list[str]:
    """argv for one launch: never a key, and a unix socket unless the binary cannot listen on one."""
    if options.router is not None:
        # The router hands its own flags to every child; each child is named by its section (`--alias`).
        argv = [str(options.binary), options.router.flag(), str(options.router.path)]
    else:
        argv = [str(options.binary), "--model", str(options.model), "--alias", options.alias]
    argv += ["--n-predict", str(options.max_tokens), "--no-webui", "--jinja"]
    if unix_socket is not None:
        argv += ["--host", str(unix_socket)]
    else:
        argv += ["--host", "127.0.0.1", "--port", "0"]
    if options.ctx_size is not None:
        argv += ["--ctx-size", str(options.ctx_size)]
    if options.parallel is not None:
        argv += ["--parallel", str(options.parallel)]
    if options.chat_template_file is not None:
        argv += ["--chat-template-file", str(options.chat_template_file)]
    if options.mmproj is not None:
        argv += ["--mmproj", str(options.mmproj)]
    return argv + list(validate_extra_args(options.extra_args))


def parse_listening_line(line: str) -> ListenAddress | None:
    """llama-server's ``listening on ...`` line: how the TCP fallback learns its port without a race."""
    match = _LISTENING.search(line)
    if not match:
        return None
    if match.group("path"):
        return ListenAddress(unix_path=match.group("path"))
    return ListenAddress(host=match.group("host").strip("[]"), port=int(match.group("port")))
