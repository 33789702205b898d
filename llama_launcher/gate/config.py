"""The gate process's settings: one frozen object, read once from `<runtime>/gate.json`.

The parent (`llama-direct serve`) writes the file; it holds no secret (the master key lives in the
launcher, the signing key in the broker), so it may sit in the runtime dir like any other file.

Fields (JSON name = attribute name):

- `audience`, `issuer`: the `aud` every token must carry, and the `iss` it may carry: one broker id,
  or a list when several brokers share one audience (`--audience`, `--issuer` on `serve`); read as a
  tuple either way.
- `lane_prefix`: the direct lane's path prefix, `/direct`; a request is on the lane when its target
  starts with `lane_prefix + "/"`.
- `broker_socket`: the broker's public app; every public request off the lane is relayed there.
- `control_socket`: the broker's internal app; `GET /jwks` and `GET /revocations` are pulled there.
- `private_socket`: the gate's own unix socket (mode 0600): the broker's baseline and `GET /health`.
- `allowed_origins`: app origins that may call the lane cross-origin (two-port mode only).
- `two_port`: the public socket is the lane's own port; it serves `/direct/…` only, with CORS.
- `tls_cert`, `tls_key`: PEM files; when both are set the public listener speaks TLS.
- `trusted_proxies`: addresses (HAProxy's) whose `X-Forwarded-For` and `X-Forwarded-Proto` the gate
  passes on to the broker; from anyone else they are dropped and the gate sets its own.
- `max_body_bytes`: the largest request body accepted (413 beyond).
- `head_timeout`: seconds a request head may take to arrive (408 after), and a kept-alive
  connection may stay idle (closed after).
- `body_timeout`: seconds a request body may pause between two reads (408 after).
- `model`: llama-server's `--alias`, reported by `/health`.
- `max_tokens`: the hard cap on generation length (llama-server's `-n` backstop).
- `keyset_interval`: seconds between two pulls of the JWKS and the revocations.
- `connect_timeout`: seconds to open a connection to llama-server or the broker (504 after).
- `upstream_head_timeout`: seconds llama-server may take to send a response head (504 after).
  Long, because a non-streaming chat answers only once the whole generation is done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from llama_direct.lanes import LANE_PREFIX

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class GateConfig:
    audience: str
    issuer: str | tuple[str, ...]
    broker_socket: str
    control_socket: str
    private_socket: str
    model: str
    max_tokens: int
    lane_prefix: str = LANE_PREFIX
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    two_port: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    head_timeout: float = 5.0
    body_timeout: float = 30.0
    keyset_interval: float = 0.5
    connect_timeout: float = 5.0
    upstream_head_timeout: float = 600.0

    def __post_init__(self) -> None:
        issuers = (self.issuer,) if isinstance(self.issuer, str) else tuple(self.issuer)
        object.__setattr__(self, "issuer", issuers)
        if not (self.audience and issuers and all(isinstance(i, str) and i for i in issuers)):
            raise ValueError("audience and issuer must be non-empty")
        if not self.lane_prefix.startswith("/") or self.lane_prefix.endswith("/"):
            raise ValueError("lane_prefix must start with '/' and not end with one")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.max_body_bytes < 1 or self.max_tokens < 1:
            raise ValueError("max_body_bytes and max_tokens must be positive")
        if min(self.head_timeout, self.body_timeout, self.keyset_interval, self.connect_timeout) <= 0:
            raise ValueError("timeouts and intervals must be positive")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateConfig:
        """Build from the JSON object; an unknown field is an error, so a typo cannot pass silently."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(data.keys() - known)
        if unknown:
            raise ValueError(f"unknown gate settings: {', '.join(unknown)}")
        values = dict(data)
        for name in ("allowed_origins", "trusted_proxies"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> GateConfig:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def to_dict(self) -> dict[str, Any]:
        data = {field.name: getattr(self, field.name) for field in fields(self)}
        data["allowed_origins"] = list(self.allowed_origins)
        data["trusted_proxies"] = list(self.trusted_proxies)
        data["issuer"] = list(self.issuer)
        return data
