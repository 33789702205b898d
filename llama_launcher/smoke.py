"""Prove a llama-server binary before trusting it: load the default model and generate one token.

A binary that builds is not a binary that runs: a native build can die of SIGILL on another CPU, and
llama.cpp's AMX kernels die of SIGSEGV on the first decode. The smoke run starts the binary exactly
as ``serve`` would (same extra arguments, a generated key, a private unix socket), asks for one token,
and turns any failure into one error that names the cause and a remedy that works as written.
"""

from __future__ import annotations

import shlex
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import httpx

from llama_launcher.errors import SmokeFailed, StartError
from llama_launcher.paths import make_runtime_dir
from llama_launcher.server_args import ServerOptions
from llama_launcher.server_process import LlamaServer, describe_exit

SMOKE_TIMEOUT_SECONDS = 180.0
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE}
_SHOWN_LINES = 8


def prove(binary: Path, model: Path, extra_args: Sequence[str], source: str) -> None:
    """Start, wait until ready, generate one token, stop; raise :class:`SmokeFailed` on any failure."""
    runtime = make_runtime_dir()
    server = LlamaServer(
        ServerOptions(binary=binary, model=model, alias="smoke", max_tokens=1, extra_args=tuple(extra_args)),
        runtime,
    )
    try:
        server.start()
        try:
            server.wait_ready(timeout=SMOKE_TIMEOUT_SECONDS, show_progress=False)
            problem = _one_token(server)
        except StartError as error:
            raise SmokeFailed(explain(str(error), error.exit_code, error.last_lines, extra_args, source, binary)) \
                from None
        if problem is not None:
            raise SmokeFailed(explain(problem, None, server.last_lines(), extra_args, source, binary))
    finally:
        server.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def _one_token(server: LlamaServer) -> str | None:
    """None when llama-server generated a token; otherwise what went wrong, in words."""
    address = server.address
    transport = httpx.HTTPTransport(uds=address) if isinstance(address, str) else httpx.HTTPTransport()
    base = "http://llama-server" if isinstance(address, str) else f"http://{address[0]}:{address[1]}"
    try:
        with httpx.Client(transport=transport, timeout=SMOKE_TIMEOUT_SECONDS) as client:
            response = client.post(
                f"{base}/completion", json={"prompt": "Hello", "n_predict": 1, "cache_prompt": False},
                headers={"Authorization": server.authorization().decode("ascii")},
            )
    except httpx.HTTPError as error:
        code = server.exit_code()
        if code is not None:
            return f"{describe_exit(code)} while generating a token"
        return f"llama-server did not answer a one-token request ({type(error).__name__})"
    if response.status_code != 200:
        return f"llama-server answered {response.status_code} to a one-token request"
    try:
        predicted = int(response.json().get("tokens_predicted", 0))
    except (ValueError, AttributeError, TypeError):
        predicted = 0
    if predicted < 1:
        return "llama-server answered but generated no token"
    return None


def explain(
    what: str, exit_code: int | None, last_lines: Sequence[str], extra_args: Sequence[str], source: str,
    binary: Path,
) -> str:
    """One error a person can act on: what happened, what llama-server said last, and what to run."""
    said = "".join(f"\n  llama-server said: {line}" for line in list(last_lines)[-_SHOWN_LINES:])
    return f"{what} (llama-server from {source}: {binary}){said}\n  {remedy(exit_code, extra_args, source)}"


def remedy(exit_code: int | None, extra_args: Sequence[str], source: str) -> str:
    """The next thing to try. A crash in the CPU kernels is avoided by ``--no-repack`` (the AMX and the
    AVX repacked paths are reached only through repacking); otherwise another binary is the way out."""
    crashed = exit_code is not None and exit_code < 0 and -exit_code in {int(s) for s in _CRASH_SIGNALS}
    other = "name another binary with --llama-server PATH (or LLAMA_SERVER)"
    if source == "cache":
        other += ", or delete the cached build and run `llama-direct setup` to rebuild it"
    if crashed and "--no-repack" not in extra_args:
        args = shlex.join([*extra_args, "--no-repack"])
        return (f"remedy: start it without the repacked CPU kernels: `llama-direct serve -- {args}` "
                f"(or `make serve ARGS=\"-- {args}\"`); or {other}")
    return f"remedy: {other}"
