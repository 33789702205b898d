"""`serve`'s flags, in groups an operator reads top down: the everyday ones first, the fleet's last.

One flat list of 40 flags put Redis, JWKS and TLS before `--model`; the groups (model, access,
deployment, fleet, limits, logging) keep each flag beside the ones it is used with.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from pathlib import Path

from llama_direct.header_users import (
    DEFAULT_LIMITS_FLAG,
    DEFAULT_MAX_HEADER_USERS,
    MAX_HEADER_USERS_FLAG,
    MAX_HEADER_USERS_LIMIT,
    TRUSTED_PROXY_FLAG,
    TRUSTED_USER_HEADER_FLAG,
    header_name,
)
from llama_direct.ids import ID_PATTERN
from llama_direct.logs import LOG_FORMATS
from llama_direct.metrics import MAX_METRIC_USERS
from llama_direct.runtime import REDIS_URL_ENV, UPSTREAM_KEY_ENV
from llama_direct.tokens import MAX_SYSTEM_PROMPT_CHARS, is_system_prompt
from llama_direct.users import UserError
from llama_launcher.gate.config import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING,
    DEFAULT_RESUME_WINDOW,
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_STREAMS_PER_USER,
)
from llama_launcher.users_cli import parse_limits

UNLIMITED_RATE = 10**9
"""The highest rate limit serve takes: the bench sets it to measure the lane, not the limiter."""

GROUPS = ("model", "access", "deployment", "fleet", "limits", "logging", "metrics")
"""The titles of serve's flag groups, in the order `serve --help` lists them."""

Flags = argparse._ActionsContainer
"""A parser or one of its groups: both take `add_argument`."""


def ip_address(value: str) -> str:
    """An IP address as the socket reports it (no host names: a proxy is trusted by its address)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {value!r}") from None


def pinned_prompt(text: str) -> tuple[str, str]:
    """`--system-prompt MODEL=FILE`: the model's name and the file's text (UTF-8, one final newline dropped)."""
    model, _, path = text.partition("=")
    if not model or not path:
        raise argparse.ArgumentTypeError("--system-prompt takes MODEL=FILE")
    try:
        prompt = Path(path).read_text(encoding="utf-8").removesuffix("\n")
    except (OSError, UnicodeDecodeError):
        raise argparse.ArgumentTypeError(f"--system-prompt: {model}'s file cannot be read as UTF-8 text") from None
    if not is_system_prompt(prompt):
        raise argparse.ArgumentTypeError(f"--system-prompt: {model}'s prompt must hold 1 to "
                                         f"{MAX_SYSTEM_PROMPT_CHARS} characters (as JSON)")
    return model, prompt


def user_header(text: str) -> str:
    """`--trusted-user-header`'s value: an HTTP header name llama-direct reads for nothing else."""
    try:
        return header_name(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def name(text: str) -> str:
    """An audience or issuer name: what the ids file allows, so it needs no escaping anywhere."""
    if not ID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 to 128 letters, digits or _.:-")
    return text


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type that names the allowed range, so a bad value is a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    parse.__name__ = "number"
    return parse


def add_server_options(flags: Flags) -> None:
    """What llama-server serves, and how: shared by `serve` and `doctor`."""
    flags.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                       help="a GGUF file (default: SmolLM2-135M-Instruct, fetched once); repeat it, "
                       "optionally as NAME=PATH, to serve several models through llama-server's router")
    flags.add_argument("--model-alias", metavar="NAME", help="the model's public name (default: from the file name)")
    flags.add_argument("--models-dir", metavar="DIR", type=Path,
                       help="serve every GGUF model in this folder (router mode)")
    flags.add_argument("--models-preset", metavar="INI", type=Path,
                       help="serve the models of this llama-server preset INI file (router mode)")
    flags.add_argument("--models-max", metavar="N", type=int, help="router mode: how many models stay loaded at once")
    flags.add_argument("--llama-server", metavar="PATH", help="the llama-server binary to run")
    flags.add_argument("--chat-template", metavar="TEMPLATE", help="'think', 'tools', or a Jinja template file")
    flags.add_argument("--ctx", metavar="N", type=int, help="llama-server context size")
    flags.add_argument("--parallel", metavar="N", type=int, help="llama-server parallel slots")
    flags.add_argument("--mmproj", metavar="GGUF", type=Path, help="multimodal projector for a vision model")


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    serve = commands.add_parser("serve", help="start llama-server, the gate and the broker on one port",
                                usage="%(prog)s [options] [-- llama-server arguments]",
                                description="Serve a model: the page, the login and the direct lane on one port.")
    groups = {title: serve.add_argument_group(title) for title in GROUPS}
    _model(groups["model"])
    _access(groups["access"])
    _deployment(groups["deployment"])
    _fleet(groups["fleet"])
    _limits(groups["limits"])
    _logging(groups["logging"])
    _metrics(groups["metrics"])
    return serve


def _model(flags: Flags) -> None:
    add_server_options(flags)
    flags.add_argument("--upstream", metavar="URL", action="append", default=[],
                       help="attach to a running llama-server: http(s)://host:port or unix:/path; repeatable "
                       "(the gate routes each request to the least busy one serving its model); "
                       "not mixed with a launched llama-server")
    flags.add_argument("--upstream-key-file", metavar="FILE", type=Path, action="append", default=[],
                       help=f"an attached server's API key, read from a file: once for every upstream, or once "
                       f"per --upstream, by position (or {UPSTREAM_KEY_ENV} for all)")
    flags.add_argument("--system-prompt", metavar="MODEL=FILE", action="append", default=[], type=pinned_prompt,
                       help="pin FILE's text as MODEL's system prompt in every grant (repeatable): the gate puts "
                       "it first and refuses clients' own system messages and special-token text")
    flags.add_argument("server_args", nargs=argparse.REMAINDER, help="-- then extra llama-server arguments")


def _access(flags: Flags) -> None:
    flags.add_argument("--host", metavar="ADDR", default="127.0.0.1", help="public address (default 127.0.0.1)")
    flags.add_argument("--port", metavar="PORT", type=int_in(0, 65535), default=8000,
                       help="public port (default 8000; 0 picks a free one)")
    flags.add_argument("--access-token-file", metavar="FILE", type=Path,
                       help="a fixed login token, read from this file")
    flags.add_argument("--data-dir", metavar="DIR", type=Path,
                       help="keys, ids and logs (default ~/.local/share/llama-direct)")


def _deployment(flags: Flags) -> None:
    flags.add_argument("--public-url", metavar="URL", help="the base URL browsers use, behind a reverse proxy")
    flags.add_argument("--tls-self-signed", action="store_true", help="make (once) and use a self-signed pair")
    flags.add_argument("--tls-cert", metavar="PEM", type=Path, help="TLS certificate (PEM) for the public port")
    flags.add_argument("--tls-key", metavar="PEM", type=Path, help="TLS private key (PEM) for the public port")
    flags.add_argument(TRUSTED_PROXY_FLAG, action="append", default=[], metavar="ADDR", type=ip_address,
                       help="a reverse proxy's address whose X-Forwarded-For/-Proto are believed (repeatable)")
    flags.add_argument(TRUSTED_USER_HEADER_FLAG, metavar="NAME", type=user_header,
                       help=f"behind an authenticating proxy: the header naming the user, believed only from a "
                       f"{TRUSTED_PROXY_FLAG} address (stripped from everyone else's requests)")
    flags.add_argument(DEFAULT_LIMITS_FLAG, metavar="LIMITS", type=parse_limits,
                       help="the limits of users made from that header, as users add takes them, in one "
                       "string: \"--streams 2 --tokens-per-day 100000\"")
    flags.add_argument(MAX_HEADER_USERS_FLAG, metavar="N", type=int_in(1, MAX_HEADER_USERS_LIMIT),
                       help=f"users that header may create; a new name past it is refused (default "
                       f"{DEFAULT_MAX_HEADER_USERS})")
    flags.add_argument("--gate-port", metavar="PORT", type=int_in(0, 65535),
                       help="two-port mode: the direct lane on a port of its own")
    flags.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="two-port mode: another app origin that may call the lane (repeatable)")


def _fleet(flags: Flags) -> None:
    flags.add_argument("--algorithm", choices=("EdDSA", "ES256"), default="EdDSA", help="token signature")
    flags.add_argument("--signing-key-file", metavar="PEM", type=Path,
                       help="sign with this Ed25519 or P-256 PEM key (mode 0600) instead of the data dir's")
    flags.add_argument("--key-rotation-hours", metavar="HOURS", type=int_in(0, 8760), default=24,
                       help="replace the broker's signing key this often (default 24; 0: never)")
    flags.add_argument("--audience", type=name, metavar="NAME",
                       help="the tokens' aud, shared by several gates (default: this data dir's gate id)")
    flags.add_argument("--issuer", type=name, action="append", default=[], metavar="NAME",
                       help="a broker whose tokens the gate accepts, repeatable; the first is this broker's own "
                       "iss (default: this data dir's broker id)")
    flags.add_argument("--issuer-jwks", action="append", default=[], metavar="ISSUER=URL",
                       help="pull that --issuer's public keys from its https:// JWKS URL (repeatable); they verify "
                       "its tokens only")
    flags.add_argument("--jwks-ca-file", type=Path, metavar="PEM",
                       help="trust only these CAs for the --issuer-jwks servers (default: the system's store)")
    flags.add_argument("--jwks-interval", type=int_in(5, 3600), default=30, metavar="SECONDS",
                       help="pull each --issuer-jwks this often (default 30), and at once on an unknown kid")
    flags.add_argument("--redis-url-file", metavar="FILE", type=Path,
                       help=f"share replay cache, revocations, rate counters and sessions in Redis: its URL, "
                       f"read from this file (or {REDIS_URL_ENV}; never on the command line)")


def _limits(flags: Flags) -> None:
    flags.add_argument("--max-tokens", metavar="N", type=int_in(1, 1 << 20), default=2048,
                       help="hard cap on generated tokens per request")
    flags.add_argument("--token-ttl", metavar="SECONDS", type=int_in(1, 300), default=30,
                       help="credential lifetime in seconds (max 300)")
    flags.add_argument("--rate-per-minute", metavar="N", type=int_in(1, UNLIMITED_RATE), default=120,
                       help="token negotiations per minute per session (default 120)")
    flags.add_argument("--burst", metavar="N", type=int_in(1, UNLIMITED_RATE), default=20,
                       help="negotiations a session may make at once before the rate applies (default 20)")
    flags.add_argument("--loads-per-minute", metavar="N", type=int_in(1, UNLIMITED_RATE), default=6,
                       help="many models: loads a session may cause per minute (default 6; a load stalls the box)")
    flags.add_argument("--max-connections", metavar="N", type=int_in(16, 1 << 20), default=DEFAULT_MAX_CONNECTIONS,
                       help=f"client connections held at once, in all (default {DEFAULT_MAX_CONNECTIONS}; "
                       "lowered to what the descriptor limit allows)")
    flags.add_argument("--max-pending-per-address", metavar="N", type=int_in(1, 1 << 20), default=DEFAULT_MAX_PENDING,
                       help="connections one client address may have still sending a request head or body "
                       f"(default {DEFAULT_MAX_PENDING}; streams being answered do not count)")
    flags.add_argument("--streams-per-user", metavar="N", type=int_in(1, 1 << 20), default=DEFAULT_STREAMS_PER_USER,
                       help=f"streams one user may have at once, per gate (default {DEFAULT_STREAMS_PER_USER}; "
                       "the owner, who holds the access token, is not capped)")
    flags.add_argument("--resume-window", metavar="SECONDS", type=int_in(1, 3600), default=int(DEFAULT_RESUME_WINDOW),
                       help="a resumable stream whose client left is cancelled after this long without a resume "
                       f"(default {DEFAULT_RESUME_WINDOW:.0f})")
    flags.add_argument("--send-timeout", metavar="SECONDS", type=int_in(1, 3600), default=int(DEFAULT_SEND_TIMEOUT),
                       help="a client that reads nothing for this long is cut, and its stream with it "
                       f"(default {DEFAULT_SEND_TIMEOUT:.0f})")


def _logging(flags: Flags) -> None:
    flags.add_argument("--verbose", action="store_true",
                       help="everything, llama-server's own lines and each request included, on the terminal "
                       "as well as in the log files")
    flags.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                       help="how the log files are written: text lines, or one JSON object a line for log "
                       "shippers (default text)")


def _metrics(flags: Flags) -> None:
    flags.add_argument("--metrics-port", metavar="PORT", type=int_in(0, 65535),
                       help="also serve /metrics on a port of its own (same host and TLS; it still needs the "
                       "metrics token: docs/metrics.md)")
    flags.add_argument("--metrics-per-user", action="store_true",
                       help=f"count tokens per user in /metrics too (the first {MAX_METRIC_USERS} users by id, "
                       "then 'other')")
