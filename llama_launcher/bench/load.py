"""The app's load, in a process of its own so that the measuring client's loop is not the one busy.

`--slow N` baseline streams held open at a slow pace (the broker relays every one of them) and
`--hammers M` loops of `POST /direct-stream` back to back (each one a session check and a token
signature in the broker). It stops on SIGTERM or after `--seconds`, and prints what it did as
one JSON line. The access token is read from `BENCH_ACCESS_TOKEN`, never argv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from llama_launcher.bench.clients import Target, chat_request, negotiate, stream_once

TOKEN_ENV = "BENCH_ACCESS_TOKEN"
SLOW_BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000, "stream": True,
             "user": "bench-pace:2"}


async def run(host: str, port: int, access: str, slow: int, hammers: int, seconds: float) -> dict[str, int]:
    public = Target((host, port), "/v1/chat/completions")
    counts = {"negotiations": 0, "negotiation_errors": 0, "slow_streams": 0, "slow_errors": 0}
    request = chat_request(public, json.dumps(SLOW_BODY).encode(), f"Bearer {access}")

    async def slow_stream() -> None:
        while True:
            try:
                status = (await stream_once(public, request, timeout=seconds)).status
            except (OSError, TimeoutError):
                status = 0
            counts["slow_streams"] += 1
            if status != 200:
                counts["slow_errors"] += 1
                await asyncio.sleep(0.1)

    async def hammer() -> None:
        while True:
            try:
                await negotiate(public, access, {"max_tokens": 16})
                counts["negotiations"] += 1
            except (OSError, TimeoutError):
                counts["negotiation_errors"] += 1
                await asyncio.sleep(0.01)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [loop.create_task(slow_stream()) for _ in range(slow)]
    tasks += [loop.create_task(hammer()) for _ in range(hammers)]
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llama_launcher.bench.load", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow", type=int, default=64)
    parser.add_argument("--hammers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    from llama_launcher.bench.processes import raise_fd_limit, run_loop

    raise_fd_limit()
    counts = run_loop(run(args.host, args.port, os.environ.pop(TOKEN_ENV, ""), args.slow, args.hammers,
                          args.seconds))
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
