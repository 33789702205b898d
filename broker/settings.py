"""The broker's settings: what the parent process decided, read once at startup.

The parent writes them to a JSON file whose path is in `LLAMA_DIRECT_BROKER_CONFIG`, typed once as
`llama_direct.config_files.BrokerFile`. The access token
is never in that file: it reaches the broker in `LLAMA_DIRECT_ACCESS_TOKEN`, so no file on disk
holds it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llama_direct.config_files import BrokerFile
from llama_direct.header_users import HeaderUsers, header_users_from_document
from llama_direct.ids import ID_PATTERN
from llama_direct.runtime import ACCESS_TOKEN_ENV, BROKER_CONFIG_FILE
from llama_direct.runtime import BROKER_CONFIG_ENV as CONFIG_ENV
from llama_direct.tokens import (
    ALGORITHMS,
    DEFAULT_TTL_SECONDS,
    MAX_SYSTEM_PROMPT_CHARS,
    MAX_TTL_SECONDS,
    is_system_prompt,
)
from llama_direct.typed_json import MalformedDocument, check_document, parse_document
from llama_direct.users import UserError

TOGGLE_ENV = "UNSLOTH_DIRECT_STREAM"
MIN_ACCESS_TOKEN_LENGTH = 8
_OFF_VALUES = frozenset({"0", "false", "off"})


class SettingsError(ValueError):
    """The settings cannot be used; the message names the field, never its value."""


@dataclass(frozen=True)
class BrokerSettings:
    data_dir: Path
    broker_socket: Path
    control_socket: Path
    gate_socket: Path
    model: str
    models: tuple[str, ...] = ()
    """Router mode: every model's name, the default (`model`) first; empty for one model."""
    load_rate_per_minute: int = 6
    """Model loads a user may cause per minute: a load costs the whole box."""
    public_url: str | None = None
    gate_port: int | None = None
    allowed_origins: tuple[str, ...] = ()
    algorithm: str = "EdDSA"
    token_ttl: int = DEFAULT_TTL_SECONDS
    max_tokens_cap: int = 2048
    system_prompts: Mapping[str, str] = field(default_factory=dict)
    """Model -> the system prompt pinned into each grant for it (`--system-prompt`), unless the host
    app pins its own (`broker.mount.direct_router(system_prompt=)`)."""
    rate_per_minute: int = 120
    burst: int = 20
    signing_key_file: Path | None = None
    key_rotation_hours: float = 24.0
    audience: str | None = None
    issuer: str | None = None
    header_users: HeaderUsers | None = None
    """`--trusted-user-header`'s users: None, no user is ever taken from the gate's forwarded header."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise SettingsError("model must be a non-empty alias")
        if self.algorithm not in ALGORITHMS:
            raise SettingsError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        if not _positive_int(self.token_ttl) or self.token_ttl > MAX_TTL_SECONDS:
            raise SettingsError(f"token_ttl must be between 1 and {MAX_TTL_SECONDS} seconds")
        for name in ("max_tokens_cap", "rate_per_minute", "burst", "load_rate_per_minute"):
            if not _positive_int(getattr(self, name)):
                raise SettingsError(f"{name} must be a positive integer")
        for model, prompt in self.system_prompts.items():
            if not (isinstance(model, str) and model and is_system_prompt(prompt)):
                raise SettingsError(f"system_prompts must map model names to prompts of 1 to "
                                    f"{MAX_SYSTEM_PROMPT_CHARS} characters")
        if isinstance(self.key_rotation_hours, bool) or not isinstance(self.key_rotation_hours, int | float) \
                or not 0 <= self.key_rotation_hours <= 24 * 365:
            raise SettingsError("key_rotation_hours must be between 0 (never) and 8760")
        for name in ("audience", "issuer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not ID_PATTERN.fullmatch(value)):
                raise SettingsError(f"{name} must be 1 to 128 letters, digits or _.:-")
        if self.gate_port is not None and (not _positive_int(self.gate_port) or self.gate_port > 65535):
            raise SettingsError("gate_port must be a port number")
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                raise SettingsError("public_url must be an http(s) URL without query or fragment")
        for origin in self.allowed_origins:
            if not isinstance(origin, str) or normalise_origin(origin) is None:
                raise SettingsError("allowed_origins must be origins like https://app.example:8443")

    @property
    def key_max_age(self) -> float | None:
        """Seconds a signing key signs before a successor is staged; None: never on schedule."""
        return self.key_rotation_hours * 3600 if self.key_rotation_hours else None

    @property
    def public_base(self) -> str | None:
        """`public_url` without its trailing slash, ready to have a path appended."""
        return self.public_url.rstrip("/") if self.public_url is not None else None

    @property
    def public_prefix(self) -> str:
        """The path prefix a reverse proxy adds in front of every path the page uses ("" for none)."""
        if self.public_url is None:
            return ""
        return urlsplit(self.public_url).path.rstrip("/")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BrokerSettings:
        """`raw` (a decoded `broker.json`) checked against its definition (`llama_direct.config_files`),
        then each value against what its type cannot say."""
        try:
            document = check_document(dict(raw), BrokerFile, name=BROKER_CONFIG_FILE)
        except MalformedDocument as error:
            raise SettingsError(str(error)) from None
        return cls.from_document(document)

    @classmethod
    def from_document(cls, document: BrokerFile) -> BrokerSettings:
        values: dict[str, Any] = dict(document)
        for name in ("data_dir", "broker_socket", "control_socket", "gate_socket"):
            values[name] = Path(document[name])
        key_file = document.get("signing_key_file")
        values["signing_key_file"] = Path(key_file) if key_file is not None else None
        values["models"] = tuple(document.get("models", ()))
        values["allowed_origins"] = tuple(document.get("allowed_origins", ()))
        header_users = document.get("header_users")
        try:
            values["header_users"] = header_users_from_document(header_users) if header_users is not None else None
        except UserError as error:
            raise SettingsError(f"header_users: {error}") from None
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path | str) -> BrokerSettings:
        try:
            document = parse_document(Path(path).read_bytes(), BrokerFile, name=BROKER_CONFIG_FILE)
        except OSError:
            raise SettingsError(f"{BROKER_CONFIG_FILE} cannot be read") from None
        except MalformedDocument as error:
            raise SettingsError(str(error)) from None
        return cls.from_document(document)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> BrokerSettings:
        path = environ.get(CONFIG_ENV)
        if not path:
            raise SettingsError(f"{CONFIG_ENV} is not set")
        return cls.from_file(path)


def access_token_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """The login token; a short one is refused, since the log filter could not scrub it safely."""
    token = environ.get(ACCESS_TOKEN_ENV, "")
    if not token:
        raise SettingsError(f"{ACCESS_TOKEN_ENV} is not set")
    if len(token) < MIN_ACCESS_TOKEN_LENGTH:
        raise SettingsError(f"{ACCESS_TOKEN_ENV} must be at least {MIN_ACCESS_TOKEN_LENGTH} characters long")
    return token


def direct_stream_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """`UNSLOTH_DIRECT_STREAM` set to 0, false or off turns the lane off; unset or anything else is on."""
    return environ.get(TOGGLE_ENV, "").strip().lower() not in _OFF_VALUES


def normalise_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lower case, or None when `origin` is not a plain http(s) origin."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" if port in (None, default) else f"{parts.scheme}://{host}:{port}"


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
