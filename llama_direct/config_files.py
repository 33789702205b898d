"""The three files `llama-direct serve` writes into its runtime dir, each typed once here for its one
writer and its one reader.

- `BrokerFile`, `broker.json`: written by the supervisor (`llama_launcher.supervisor`) from what serve's
  flags decide (`BrokerFlags`, built in `llama_launcher.cli`) and where the children listen; read by the
  broker (`broker.settings.BrokerSettings`), and by a host app's mounted broker from the lane's file.
- `GateFile`, `gate.json`: the same way from `GateFlags`; read by the gate process
  (`llama_launcher.gate.config.GateConfig`).
- `LaunchFile`, `launch.json`: what the gate process puts behind the lane, a llama-server it launches
  or the ones it attaches to (`llama_launcher.launch_spec.LaunchSpec`).

A reader checks the bytes with `llama_direct.typed_json.parse_document` against the definition here
(an unknown key, a missing one or a value of another type is a `MalformedDocument` that names the
field), then checks what the types cannot say (a positive count, an origin's shape) itself. A key
marked `NotRequired` may be left out: the reader's default applies. None holds a secret: the access
token and the upstream keys travel in the children's environment. Pure.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from llama_direct.header_users import HeaderUsersDocument


class BrokerFlags(TypedDict):
    """What serve's flags decide for the broker."""

    model: str
    """The default model's public name."""
    models: NotRequired[list[str]]
    """Router mode: every model's name, the default first; empty for one model."""
    load_rate_per_minute: NotRequired[int]
    public_url: NotRequired[str | None]
    gate_port: NotRequired[int | None]
    """The lane's own port (two-port mode); None: the lane is on the app's port."""
    allowed_origins: NotRequired[list[str]]
    algorithm: NotRequired[str]
    token_ttl: NotRequired[int]
    max_tokens_cap: NotRequired[int]
    system_prompts: NotRequired[dict[str, str]]
    """`--system-prompt MODEL=FILE`: model -> the system prompt pinned into each of its grants."""
    rate_per_minute: NotRequired[int]
    burst: NotRequired[int]
    signing_key_file: NotRequired[str | None]
    key_rotation_hours: NotRequired[float]
    audience: NotRequired[str | None]
    issuer: NotRequired[str | None]
    header_users: NotRequired[HeaderUsersDocument | None]
    """`--trusted-user-header`'s users (`llama_direct.header_users`); None: no user is taken from a header."""


class BrokerFile(BrokerFlags):
    """`broker.json`: the flags' part, and where the data and the sockets are."""

    data_dir: str
    broker_socket: str
    control_socket: str
    gate_socket: str


class GateFlags(TypedDict):
    """What serve's flags decide for the gate (the fields are explained in `llama_launcher.gate.config`)."""

    model: str
    lane_prefix: NotRequired[str]
    allowed_origins: NotRequired[list[str]]
    two_port: NotRequired[bool]
    tls_cert: NotRequired[str | None]
    tls_key: NotRequired[str | None]
    max_body_bytes: NotRequired[int]
    max_small_body_bytes: NotRequired[int]
    head_timeout: NotRequired[float]
    body_timeout: NotRequired[float]
    max_connections: NotRequired[int]
    max_pending_per_address: NotRequired[int]
    trusted_proxies: NotRequired[list[str]]
    trusted_user_header: NotRequired[str | None]
    keyset_interval: NotRequired[float]
    issuer_jwks: NotRequired[list[tuple[str, str]]]
    jwks_ca_file: NotRequired[str | None]
    jwks_interval: NotRequired[float]
    connect_timeout: NotRequired[float]
    upstream_head_timeout: NotRequired[float]
    resume_window: NotRequired[float]
    send_timeout: NotRequired[float]
    streams_per_user: NotRequired[int]
    uncapped_users: NotRequired[list[str]]


class GateFile(GateFlags):
    """`gate.json`: the flags' part, the names tokens must carry, and the sockets."""

    audience: str
    issuer: str | list[str]
    broker_socket: str
    control_socket: str
    private_socket: str


class LaunchFile(TypedDict):
    """`launch.json`: every field, as `LaunchSpec` writes it."""

    mode: Literal["launch", "attach"]
    binary: str | None
    model: str | None
    alias: str
    max_tokens: int
    ctx_size: int | None
    parallel: int | None
    chat_template_file: str | None
    mmproj: str | None
    extra_args: list[str]
    upstreams: list[str]
    router_kind: Literal["preset", "dir", "list"] | None
    router_path: str | None
    models: list[str]
    model_paths: dict[str, str]
