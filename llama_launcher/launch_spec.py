"""What the gate process should put behind the lane: a llama-server it launches, or one that runs.

The parent writes it as ``<runtime>/launch.json`` (typed as `llama_direct.config_files.LaunchFile`); it
holds paths and options, never a key (an attached server's key travels in the gate's environment as
``LLAMA_DIRECT_UPSTREAM_KEY``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from llama_direct.config_files import LaunchFile
from llama_direct.runtime import LAUNCH_FILE
from llama_direct.typed_json import check_document, parse_document
from llama_launcher.models import PRESET_FILE, ModelEntry, preset_text
from llama_launcher.server_args import RouterSource, ServerOptions


@dataclass(frozen=True)
class LaunchSpec:
    mode: Literal["launch", "attach"]
    binary: str | None = None
    model: str | None = None
    alias: str = "model"
    max_tokens: int = 2048
    ctx_size: int | None = None
    parallel: int | None = None
    chat_template_file: str | None = None
    mmproj: str | None = None
    extra_args: list[str] = field(default_factory=list)
    upstreams: list[str] = field(default_factory=list)
    """Attach mode: each running llama-server's URL (several: the gate routes among them)."""
    router_kind: Literal["preset", "dir", "list"] | None = None
    """"preset" or "dir": llama-server runs as a router over `router_path`; `alias` is the default model."""
    router_path: str | None = None
    models: list[str] = field(default_factory=list)
    """Every model's public name (router mode); the first is the default."""
    model_paths: dict[str, str] = field(default_factory=dict)
    """`--model NAME=PATH` list (router kind "list"): written as a preset in the runtime dir at start."""

    def materialise(self, runtime_dir: Path) -> LaunchSpec:
        """A "list" router as a "preset" one: its preset file written into the private runtime dir."""
        if self.router_kind != "list":
            return self
        preset = runtime_dir / PRESET_FILE
        entries = [ModelEntry(name, Path(path)) for name, path in self.model_paths.items()]
        preset.write_text(preset_text(entries))
        preset.chmod(0o600)
        return replace(self, router_kind="preset", router_path=str(preset))

    def server_options(self) -> ServerOptions:
        if self.mode != "launch" or not self.binary or not (self.model or self.router_path):
            raise ValueError("this launch spec attaches to a running server")
        router = RouterSource(self.router_kind or "preset", Path(self.router_path)) if self.router_path else None
        return ServerOptions(
            binary=Path(self.binary),
            model=Path(self.model) if self.model else None,
            router=router,
            alias=self.alias,
            max_tokens=self.max_tokens,
            ctx_size=self.ctx_size,
            parallel=self.parallel,
            chat_template_file=Path(self.chat_template_file) if self.chat_template_file else None,
            mmproj=Path(self.mmproj) if self.mmproj else None,
            extra_args=tuple(self.extra_args),
        )

    def to_document(self) -> LaunchFile:
        return check_document(asdict(self), LaunchFile, name=LAUNCH_FILE)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_document(), indent=2))

    @classmethod
    def read(cls, path: Path) -> LaunchSpec:
        """The file `write` wrote; `MalformedDocument` (a `ValueError`) names a field of another shape."""
        return cls(**parse_document(path.read_bytes(), LaunchFile, name=LAUNCH_FILE))
