"""The gate process's settings: one frozen object, read once from `<runtime>/gate.json`.

The file's keys and their JSON types are `llama_direct.config_files.GateFile`; this object adds the
defaults and the checks a type cannot say.

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
- `max_body_bytes`: the largest request body accepted where a large one belongs: the lane's chat
  and the broker's baseline `POST /v1/chat/completions` (413 beyond).
- `max_small_body_bytes`: the largest body relayed to any other broker route (`/direct-stream`,
  `/logout`, `/direct-stream/revoke`, `/tools/*`, the login): a larger declared length is 413 at once.
- `head_timeout`: seconds a request head may take to arrive, in all (408 after), and a kept-alive
  connection may stay idle (closed after).
- `body_timeout`: seconds a request body may take to arrive, in all, from the end of its head
  (408 after): never re-armed by a read, so a body dripped a byte at a time still ends.
- `max_connections`: public client connections held at once; one over it is answered 503 with
  `Retry-After` and closed. Lowered at start to what the descriptor limit allows (two per stream).
- `max_pending_per_address`: public connections one client address may have still sending a head
  or a body (503 with `Retry-After` beyond); a connection whose answer is streaming does not count.
- `trusted_proxies`: socket addresses of reverse proxies whose `X-Forwarded-For` names the client
  (and whose `X-Forwarded-Proto` is believed); from anyone else those headers are dropped.
- `trusted_user_header`: `--trusted-user-header`, lower-case: the header that names the user, believed
  only from `trusted_proxies` and dropped from everyone else's requests (`llama_direct.header_users`).
- `model`: llama-server's `--alias`, reported by `/health`.
- `keyset_interval`: seconds before a failed long poll of the JWKS and the revocations is retried.
- `issuer_jwks`: `[[issuer, url], ...]` (`--issuer-jwks`): other brokers' JWKS, pulled over https; each
  key pulled signs for its issuer only (`gate/jwks_document.py`). The issuer is an accepted one and
  not the first (this broker's own).
- `jwks_ca_file`: a PEM of the CAs that sign those servers' certificates; None: the system's store.
- `jwks_interval`: seconds between two pulls of each source (and at once on an unknown kid).
- `connect_timeout`: seconds to open a connection to llama-server or the broker (504 after).
- `upstream_head_timeout`: seconds llama-server may take to send a response head (504 after).
  Long, because a non-streaming chat answers only once the whole generation is done.
- `resume_window`: seconds a resumable stream whose client left may wait for a resume; then the
  gate cancels it on the upstream that holds it (`gate/stream_watch.py`), so nobody's stream runs on.
- `send_timeout`: seconds the client's write buffer may stay full (it reads nothing); then the
  client connection is cut, and the upstream one with it.
- `streams_per_user`: streams one `sub` may have at once on this gate (429 `too_many_streams`
  beyond), except `uncapped_users` (the owner, `llama_direct.tokens.OWNER`, by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from llama_direct.config_files import GateFile
from llama_direct.header_users import header_name
from llama_direct.lanes import LANE_PREFIX
from llama_direct.runtime import GATE_CONFIG_FILE
from llama_direct.tokens import OWNER
from llama_direct.typed_json import check_document, parse_document
from llama_launcher.gate.jwks_document import JwksSource, check_sources

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_SMALL_BODY_BYTES = 64 * 1024
"""The broker's own cap on its small routes (`broker.app.MAX_SMALL_BODY_BYTES`), enforced before relaying."""
DEFAULT_MAX_CONNECTIONS = 4096
"""Four times the 1,000 streams the benchmark holds; 8,192 descriptors plus a margin at two per stream."""
DEFAULT_MAX_PENDING = 256
"""A browser has six or so requests arriving at once; a burst of connects from one load tester fits."""
DEFAULT_RESUME_WINDOW = 30.0
"""Long enough for a page reload or a network switch to resume; short enough that a closed tab's
stream stops within half a minute."""
DEFAULT_SEND_TIMEOUT = 60.0
"""A client that reads nothing for a minute has gone; llama-server's own write timeout is an hour."""
DEFAULT_STREAMS_PER_USER = 4
"""A page runs one stream at a time (two for a moment while a tool round hands over); four leaves room."""


@dataclass(frozen=True)
class GateConfig:
    audience: str
    issuer: str | tuple[str, ...]
    broker_socket: str
    control_socket: str
    private_socket: str
    model: str
    lane_prefix: str = LANE_PREFIX
    allowed_origins: tuple[str, ...] = ()
    two_port: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_small_body_bytes: int = DEFAULT_MAX_SMALL_BODY_BYTES
    head_timeout: float = 5.0
    body_timeout: float = 60.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pending_per_address: int = DEFAULT_MAX_PENDING
    trusted_proxies: tuple[str, ...] = ()
    trusted_user_header: str | None = None
    keyset_interval: float = 0.5
    issuer_jwks: tuple[tuple[str, str], ...] = ()
    jwks_ca_file: str | None = None
    jwks_interval: float = 30.0
    connect_timeout: float = 5.0
    upstream_head_timeout: float = 600.0
    resume_window: float = DEFAULT_RESUME_WINDOW
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    streams_per_user: int = DEFAULT_STREAMS_PER_USER
    uncapped_users: tuple[str, ...] = (OWNER,)

    def __post_init__(self) -> None:
        issuers = (self.issuer,) if isinstance(self.issuer, str) else tuple(self.issuer)
        object.__setattr__(self, "issuer", issuers)
        if not (self.audience and issuers and all(isinstance(i, str) and i for i in issuers)):
            raise ValueError("audience and issuer must be non-empty")
        if not self.lane_prefix.startswith("/") or self.lane_prefix.endswith("/"):
            raise ValueError("lane_prefix must start with '/' and not end with one")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if min(self.max_body_bytes, self.max_small_body_bytes) < 1:
            raise ValueError("max_body_bytes and max_small_body_bytes must be positive")
        if min(self.max_connections, self.max_pending_per_address, self.streams_per_user) < 1:
            raise ValueError("max_connections, max_pending_per_address and streams_per_user must be positive")
        if min(self.head_timeout, self.body_timeout, self.keyset_interval, self.connect_timeout,
               self.jwks_interval, self.resume_window, self.send_timeout) <= 0:
            raise ValueError("timeouts and intervals must be positive")
        if self.trusted_user_header is not None and header_name(self.trusted_user_header) != self.trusted_user_header:
            raise ValueError("trusted_user_header must be a lower-case header name")
        pairs = tuple((str(issuer), str(url)) for issuer, url in self.issuer_jwks)
        object.__setattr__(self, "issuer_jwks", pairs)
        check_sources([JwksSource(issuer, url) for issuer, url in pairs], issuers)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateConfig:
        """Build from the decoded JSON object, checked against `GateFile`: an unknown field is an error,
        so a typo cannot pass silently."""
        return cls.from_document(check_document(dict(data), GateFile, name=GATE_CONFIG_FILE))

    @classmethod
    def from_document(cls, document: GateFile) -> GateConfig:
        values: dict[str, Any] = dict(document)
        for name in ("allowed_origins", "trusted_proxies", "uncapped_users"):
            if name in values:
                values[name] = tuple(values[name])
        values["issuer_jwks"] = tuple(tuple(pair) for pair in document.get("issuer_jwks", ()))
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> GateConfig:
        return cls.from_document(parse_document(path.read_bytes(), GateFile, name=GATE_CONFIG_FILE))

    def to_document(self) -> GateFile:
        """Every field, as `gate.json` holds it."""
        data: dict[str, Any] = {field.name: getattr(self, field.name) for field in fields(self)}
        for name in ("allowed_origins", "trusted_proxies", "uncapped_users", "issuer"):
            data[name] = list(data[name])
        data["issuer_jwks"] = [list(pair) for pair in self.issuer_jwks]
        return check_document(data, GateFile, name=GATE_CONFIG_FILE)


@dataclass(frozen=True)
class Listener:
    """What one listening socket serves."""

    lane: bool = True
    broker: bool = False
    health: bool = False
    cors: bool = False
    tls: bool = False
    metrics: bool = False
    """`GET /metrics` is answered here, with the metrics token (`llama_direct.metrics`)."""
