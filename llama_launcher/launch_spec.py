"""What the gate process should put behind the lane: a llama-server it launches, or one that runs.

The parent writes it as ``<runtime>/launch.json``; it holds paths and options, never a key (an
attached server's key travels in the gate's environment as ``LLAMA_DIRECT_UPSTREAM_KEY``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llama_launcher.server_args import ServerOptions


@dataclass(frozen=True)
class LaunchSpec:
    mode: str  # "launch" or "attach"
    binary: str | None = None
    model: str | None = None
    alias: str = "model"
    max_tokens: int = 2048
    ctx_size: int | None = None
    parallel: int | None = None
    chat_template_file: str | None = None
    mmproj: str | None = None
    extra_args: list[str] = field(default_factory=list)
    upstream_url: str | None = None

    def server_options(self) -> ServerOptions:
        if self.mode != "launch" or not self.binary or not self.model:
            raise ValueError("this launch spec attaches to a running server")
        return ServerOptions(
            binary=Path(self.binary),
            model=Path(self.model),
            alias=self.alias,
            max_tokens=self.max_tokens,
            ctx_size=self.ctx_size,
            parallel=self.parallel,
            chat_template_file=Path(self.chat_template_file) if self.chat_template_file else None,
            mmproj=Path(self.mmproj) if self.mmproj else None,
            extra_args=tuple(self.extra_args),
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> LaunchSpec:
        return cls(**json.loads(path.read_text()))
