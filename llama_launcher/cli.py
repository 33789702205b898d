"""llama-direct: serve (the parent process), setup (the cached installs), doctor (what was found)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import ssl
import sys
from collections.abc import Callable
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from llama_direct.config_files import BrokerFlags, GateFlags
from llama_direct.logs import configure_logging
from llama_direct.metrics import METRICS_TOKEN_ENV
from llama_direct.redaction import register_secret
from llama_direct.runtime import ACCESS_TOKEN_ENV, LOG_FORMAT_ENV, LOG_LEVEL_ENV
from llama_launcher import model, provision, secret_inputs, serve_flags
from llama_launcher.access_token import MIN_LENGTH, rotate_access_token, stored_access_token, stored_metrics_token
from llama_launcher.attached import AttachedServer
from llama_launcher.errors import LauncherError
from llama_launcher.gate.jwks_document import JwksSource, check_sources
from llama_launcher.gate.jwks_pull import tls_context
from llama_launcher.launch_spec import LaunchSpec
from llama_launcher.paths import cache_dir, default_data_dir
from llama_launcher.proxy_users import proxy_user_settings
from llama_launcher.router_launch import is_router, router_spec
from llama_launcher.secret_inputs import read_secret_file
from llama_launcher.server_args import validate_extra_args

if TYPE_CHECKING:
    from llama_launcher import supervisor

UNLIMITED_RATE = serve_flags.UNLIMITED_RATE
"""The highest rate limit serve takes (its flags live in `serve_flags`); kept here for the bench's callers."""

TEMPLATES = {"think": "smollm2-think.jinja", "tools": "chatml-tools.jinja"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama-direct", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_flags.add_serve(commands)

    setup = commands.add_parser("setup", help="find or build llama-server, fetch the default model, and prove "
                                "that they run (one token)")
    setup.add_argument("--llama-server", help="the llama-server binary to use instead of building one")
    setup.add_argument("server_args", nargs=argparse.REMAINDER,
                       help="-- then the extra llama-server arguments serve will pass")

    commands.add_parser("bench", help="measure the direct lane against raw llama-server, side by side "
                        "(llama-direct bench --help)")
    commands.add_parser("users", help="named users with their own login links, API keys and limits "
                        "(llama-direct users --help)")

    rotate = commands.add_parser("rotate-token", help="replace the owner's access token (the login link) and log "
                                 "every browser out; run it while serve is stopped")
    rotate.add_argument("--data-dir", type=Path, help="the data dir serve uses (default ~/.local/share/llama-direct)")

    doctor = commands.add_parser("doctor", help="say what was found, where, and which version")
    serve_flags.add_server_options(doctor)
    doctor.add_argument("--upstream", help="check an attached llama-server instead")
    doctor.add_argument("--upstream-key-file", type=Path)
    doctor.add_argument("server_args", nargs=argparse.REMAINDER,
                        help="-- then the extra llama-server arguments serve will pass")

    haproxy = commands.add_parser("haproxy-config", help="write an HAProxy 2.6 config: at the edge of several "
                                  "gates (--gate), or in the gate's place (--upstream, ES256 only)")
    haproxy.add_argument("--bind", default="127.0.0.1:8443", help="HOST:PORT HAProxy listens on")
    haproxy.add_argument("--tls-pem", type=Path, help="certificate and key in one PEM file: TLS on --bind")
    haproxy.add_argument("--gate", action="append", default=[], metavar="HOST:PORT[=MODEL,...]",
                         help="a serve stack, repeatable; with =MODEL,... it gets only those models' requests")
    haproxy.add_argument("--upstream", action="append", default=[], metavar="HOST:PORT[=MODEL,...]",
                         help="a llama-server, repeatable (its key is ${LLAMA_API_KEY} in HAProxy's environment); "
                         "with =MODEL,... it gets only grants for those models")
    haproxy.add_argument("--app", metavar="HOST:PORT",
                         help="where everything off the lane goes: a serve stack (page, login, negotiation, fallback)")
    haproxy.add_argument("--public-key-file", type=Path, action="append", default=[],
                         help="a broker's ES256 public key (PEM), repeatable during a rotation")
    haproxy.add_argument("--audience", type=serve_flags.name, help="the tokens' aud")
    haproxy.add_argument("--issuer", type=serve_flags.name, action="append", default=[],
                         help="an accepted iss, repeatable")
    haproxy.add_argument("--peer", action="append", default=[], metavar="NAME=HOST:PORT",
                         help="an HAProxy sharing the jti table (in the gate's place) or the conversation "
                              "table (at the edge), this one included, repeatable")
    haproxy.add_argument("--local-peer", type=serve_flags.name, help="which --peer this HAProxy is")
    haproxy.add_argument("--route", action="append", default=[], metavar="NAME",
                         help="in the gate's place: a lane route the brokers grant, repeatable (default: every "
                         "route HAProxy can check); one HAProxy cannot check is refused")
    haproxy.add_argument("--output", "-o", type=Path, help="write here (default: stdout)")
    haproxy.add_argument("--data-dir", type=Path, help="in the gate's place: the data dir whose users are checked "
                         "for token budgets, which HAProxy cannot settle (default ~/.local/share/llama-direct)")
    haproxy.add_argument("--redis-url-file", type=Path, help="in the gate's place: the fleet's Redis URL in a file "
                         "(or LLAMA_DIRECT_REDIS_URL), where the users are checked instead")
    return parser


def serve_args(argv: list[str]) -> argparse.Namespace:
    """`serve`'s flags parsed as the command line parses them: a lane takes the same ones."""
    return _parser().parse_args(["serve", *argv])


def _template_path(choice: str | None) -> Path | None:
    if not choice:
        return None
    if choice in TEMPLATES:
        return Path(str(resources.files("llama_launcher") / "templates" / TEMPLATES[choice]))
    path = Path(choice)
    if not path.is_file():
        raise LauncherError(f"--chat-template {choice}: neither {', '.join(TEMPLATES)} nor a readable file")
    return path


def _access_token(args: argparse.Namespace, data_dir: Path) -> str:
    if args.access_token_file:
        token = read_secret_file(args.access_token_file, "--access-token-file")
    elif os.environ.get(ACCESS_TOKEN_ENV):
        token = os.environ[ACCESS_TOKEN_ENV]
    else:
        token = stored_access_token(data_dir)
    if len(token) < MIN_LENGTH:
        raise LauncherError("the access token must be at least 16 characters long")
    register_secret(token)
    return token


def _metrics_token(data_dir: Path) -> str:
    """`/metrics`'s token: from the environment, else the data dir's file (made at the first start)."""
    token = os.environ.get(METRICS_TOKEN_ENV) or stored_metrics_token(data_dir)
    if len(token) < MIN_LENGTH:
        raise LauncherError(f"{METRICS_TOKEN_ENV} must be at least {MIN_LENGTH} characters long")
    register_secret(token)
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _upstream_in_clear(url: str) -> bool:
    """An `http://` upstream on another machine: its key crosses the network in clear text."""
    parts = urlsplit(url)
    return parts.scheme == "http" and not _is_loopback(parts.hostname or "")


ATTACHED_FALLBACK_ALIAS = "model"


def _attached_alias(url: str, key: str | None) -> str:
    """The attached server's own model name, so grants and its chunks agree; asked once, at start."""
    name = AttachedServer(url, key).model_name()
    if name is None:
        print(f"llama-direct: the upstream did not name its model yet; clients will see "
              f"'{ATTACHED_FALLBACK_ALIAS}' (set --model-alias to choose)", file=sys.stderr, flush=True)
        return ATTACHED_FALLBACK_ALIAS
    return name


def extra_server_args(args: argparse.Namespace) -> list[str]:
    """What follows ``--``: extra llama-server arguments, with the flags the launcher owns refused."""
    extra = [a for a in args.server_args if a != "--"] if getattr(args, "server_args", None) else []
    validate_extra_args(extra)
    return extra


def _launch_spec(args: argparse.Namespace, cache: Path, upstream_key: str | None = None) -> LaunchSpec:
    extra = extra_server_args(args)
    if args.upstream:
        alias = args.model_alias or _attached_alias(args.upstream[0], upstream_key)
        return LaunchSpec(mode="attach", upstreams=list(args.upstream), alias=alias, max_tokens=args.max_tokens)
    found = provision.ensure_llama_server(args.llama_server, cache, extra)
    if is_router(args):
        router_template = _template_path(args.chat_template)
        return router_spec(args, str(found.path), extra, str(router_template) if router_template else None)
    if args.model:
        model_path = model.check_gguf(Path(args.model[0]).resolve())
        alias = args.model_alias or model_path.stem.lower()
    else:
        model_path = model.ensure_default_model(cache)
        alias = args.model_alias or model.DEFAULT_MODEL_ALIAS
    template = _template_path(args.chat_template)
    return LaunchSpec(
        mode="launch", binary=str(found.path), model=str(model_path), alias=alias, max_tokens=args.max_tokens,
        ctx_size=args.ctx, parallel=args.parallel, chat_template_file=str(template) if template else None,
        mmproj=str(args.mmproj.resolve()) if args.mmproj else None, extra_args=extra,
    )


def serve(args: argparse.Namespace) -> int:
    from llama_launcher import supervisor

    if args.verbose:
        os.environ[LOG_LEVEL_ENV] = "DEBUG"
    os.environ[LOG_FORMAT_ENV] = args.log_format  # the children follow the parent's choices
    configure_logging(process="serve", file_pending=True)
    return supervisor.run(stack_plan(args))


def stack_plan(args: argparse.Namespace, access_token: str | None = None) -> supervisor.StackPlan:
    """What `serve`'s flags ask for, checked, with llama-server and the model found or fetched: the plan
    `serve` runs, and the one a lane started from an app's code runs (`llama_launcher.lane_process`,
    which passes a throw-away `access_token`: no one logs in to a lane)."""
    from llama_launcher import supervisor, tls

    cache = cache_dir()
    data_dir = (args.data_dir or default_data_dir()).resolve()
    if access_token is None:
        access_token = _access_token(args, data_dir)
    upstream_keys = secret_inputs.upstream_keys(args.upstream_key_file, len(args.upstream))
    if any(_upstream_in_clear(url) for url in args.upstream):
        print("llama-direct: warning: an --upstream is plain http:// to another machine: the upstream key crosses "
              "the network in clear text; use https:// or an SSH tunnel to a loopback port", file=sys.stderr,
              flush=True)
    if args.allow_origin and args.gate_port is None:
        raise LauncherError("--allow-origin needs --gate-port: in one-port mode the lane is same-origin")
    jwks_settings = _jwks_settings(args)
    user_header, header_users = proxy_user_settings(args)
    launch = _launch_spec(args, cache, upstream_keys[0] if upstream_keys else None)
    cert_pair = tls.resolve_tls(args.tls_cert, args.tls_key, args.tls_self_signed, data_dir, args.host)
    if cert_pair is None and not _is_loopback(args.host):
        print(
            f"llama-direct: warning: listening on {args.host} without TLS: the login token, session cookie and "
            "chat traffic cross the network in clear text; use --tls-self-signed or --tls-cert/--tls-key",
            file=sys.stderr, flush=True,
        )
    broker_settings: BrokerFlags = {
        "model": launch.alias, "models": launch.models, "public_url": args.public_url, "algorithm": args.algorithm,
        "token_ttl": args.token_ttl, "max_tokens_cap": args.max_tokens, "system_prompts": dict(args.system_prompt),
        "signing_key_file": str(args.signing_key_file.resolve()) if args.signing_key_file else None,
        "key_rotation_hours": args.key_rotation_hours,
        "rate_per_minute": args.rate_per_minute, "burst": args.burst, "load_rate_per_minute": args.loads_per_minute,
        "audience": args.audience, "issuer": args.issuer[0] if args.issuer else None,
        "header_users": header_users,
    }
    gate_settings: GateFlags = {
        "model": launch.alias,
        "tls_cert": str(cert_pair[0]) if cert_pair else None, "tls_key": str(cert_pair[1]) if cert_pair else None,
        "max_connections": args.max_connections, "max_pending_per_address": args.max_pending_per_address,
        "streams_per_user": args.streams_per_user, "resume_window": args.resume_window,
        "send_timeout": args.send_timeout,
        "trusted_proxies": list(args.trusted_proxy), "trusted_user_header": user_header,
    }
    if jwks_settings is not None:
        gate_settings["issuer_jwks"], gate_settings["jwks_ca_file"] = jwks_settings
        gate_settings["jwks_interval"] = float(args.jwks_interval)
    return supervisor.StackPlan(
        host=args.host, port=args.port, data_dir=data_dir, launch=launch, access_token=access_token,
        broker_settings=broker_settings, gate_settings=gate_settings, upstream_keys=tuple(upstream_keys),
        tls=cert_pair is not None, public_url=args.public_url, gate_port=args.gate_port,
        allow_origins=tuple(args.allow_origin), audience=args.audience, issuers=tuple(args.issuer),
        redis_url=secret_inputs.redis_url(args.redis_url_file),
        metrics=supervisor.MetricsPlan(_metrics_token(data_dir), args.metrics_port, args.metrics_per_user),
    )


def _jwks_settings(args: argparse.Namespace) -> tuple[list[tuple[str, str]], str | None] | None:
    """`--issuer-jwks` checked before anything starts: each an https URL for an accepted issuer other
    than this broker's own, and a CA file that loads; None without any."""
    if not args.issuer_jwks:
        if args.jwks_ca_file is not None:
            raise LauncherError("--jwks-ca-file needs --issuer-jwks")
        return None
    if not args.issuer:
        raise LauncherError("--issuer-jwks needs --issuer: this broker's own first, then the brokers it trusts")
    try:
        sources = [JwksSource.parse(text) for text in args.issuer_jwks]
        check_sources(sources, args.issuer)
    except ValueError as error:
        raise LauncherError(str(error)) from None
    ca_file = None
    if args.jwks_ca_file is not None:
        ca_file = str(args.jwks_ca_file.resolve())
        try:
            tls_context(ca_file)
        except (OSError, ssl.SSLError):
            raise LauncherError("--jwks-ca-file: not a readable PEM file of CA certificates") from None
    return [(source.issuer, source.url) for source in sources], ca_file


def doctor(args: argparse.Namespace) -> int:
    from llama_launcher import doctor as doctor_checks

    return doctor_checks.run(args, cache_dir(), extra_server_args(args))


def haproxy_config(args: argparse.Namespace) -> int:
    from llama_launcher.haproxy_config import HaproxyPlan, Peer, render
    from llama_launcher.usage_cli import deployment_has_budgets

    peers = []
    for entry in args.peer:
        name, sep, address = entry.partition("=")
        if not sep:
            raise LauncherError(f"--peer {entry!r}: expected NAME=HOST:PORT")
        peers.append(Peer(name, address))
    plan = HaproxyPlan(
        bind=args.bind, gates=tuple(args.gate), upstreams=tuple(args.upstream), app=args.app,
        tls_pem=str(args.tls_pem.resolve()) if args.tls_pem else None,
        public_keys=tuple(str(path.resolve()) for path in args.public_key_file), audience=args.audience,
        issuers=tuple(args.issuer), peers=tuple(peers), local_peer=args.local_peer, routes=tuple(args.route),
        budgets=bool(args.upstream) and deployment_has_budgets((args.data_dir or default_data_dir()).resolve(),
                                                               secret_inputs.redis_url(args.redis_url_file)),
    )
    try:
        text = render(plan)
    except ValueError as error:
        raise LauncherError(str(error)) from None
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


def setup(args: argparse.Namespace) -> int:
    """The slow, cached installs on their own, so a test run shows their progress up front, and proof
    that the binary runs here: one token from the default model."""
    cache = cache_dir()
    extra = extra_server_args(args)
    print(f"llama-direct: model: {model.ensure_default_model(cache)}", file=sys.stderr, flush=True)
    found = provision.ensure_llama_server(args.llama_server, cache, extra)
    if found.source != "cache":  # a cached build was proven when it was built
        provision.prove(found, cache, extra)
    print(f"llama-direct: llama-server from {found.source}: {found.path}", file=sys.stderr, flush=True)
    return 0


def rotate_token(args: argparse.Namespace) -> int:
    """A new login link; the old one, and every session made with it, stop working."""
    from llama_launcher.supervisor import DataDirLock

    data_dir = (args.data_dir or default_data_dir()).resolve()
    lock = DataDirLock(data_dir)  # refuses while serve runs: it holds the old token in memory
    try:
        rotate_access_token(data_dir)
    finally:
        lock.close()
    print("llama-direct: a new access token is in the data dir; every browser must log in again with the "
          "link the next `llama-direct serve` prints", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # The benchmark has a parser of its own; argparse's REMAINDER would not hand it `--quick`.
        return _installed_command("bench")(argv[1:])
    if argv[:1] == ["users"]:  # its own parser: subcommands of their own (llama_launcher.users_cli)
        from llama_launcher.users_cli import main as users_main

        return users_main(argv[1:])
    if argv[:1] == ["usage"]:  # as `users`: a command of its own (llama_launcher.usage_cli)
        from llama_launcher.usage_cli import main as usage_main

        return usage_main(argv[1:])
    args = _parser().parse_args(argv)
    commands = {"serve": serve, "setup": setup, "doctor": doctor, "haproxy-config": haproxy_config,
                "rotate-token": rotate_token}
    try:
        return commands[args.command](args)
    except LauncherError as error:
        print(f"llama-direct: error: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 0


COMMANDS_GROUP = "llama_direct.commands"
"""The entry-point group of the commands an extra adds (pyproject.toml): `bench` is built from the
launcher's parts, so the launcher finds it by name instead of importing it, and the arrows between the
two folders point one way."""


def _installed_command(name: str) -> Callable[[list[str]], int]:
    found = metadata.entry_points(group=COMMANDS_GROUP, name=name)
    if not found:
        raise SystemExit(f"llama-direct {name}: not in this install's entry points; reinstall it (make install)")
    command: Callable[[list[str]], int] = next(iter(found)).load()
    return command


if __name__ == "__main__":
    sys.exit(main())


