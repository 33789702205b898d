"""The floor: a bare asyncio relay with no checks, the least any pass-through process can cost.

Bytes go both ways untouched between a loopback TCP client and the upstream's unix socket, one
fresh upstream connection per client connection, with backpressure both ways. The client brings
the upstream key itself. What the gate costs beyond this is the price of its checks and its head
rewrite; what this costs beyond raw llama-server is the price of any extra hop.

Run as `python -m llama_launcher.bench.relay --fd N --upstream PATH` (the listening socket is
inherited, so no port is chosen then raced for).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys


class _Side(asyncio.Protocol):
    """One end of a relayed pair; what it reads goes to its peer's transport."""

    __slots__ = ("buffered", "peer", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.buffered: list[bytes] | None = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands stream protocols a Transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            if self.buffered is not None:
                self.buffered.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        peer, self.peer = self.peer, None
        if peer is not None and peer.transport is not None:
            peer.peer = None
            peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Client(_Side):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_unix_connection(_Side, self.upstream)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None or self.transport.is_closing():
            upstream.transport.close()  # type: ignore[union-attr]  # set by connection_made before the connect call returns
            return
        self.peer, upstream.peer = upstream, self
        pending, self.buffered = self.buffered or [], None
        for data in pending:
            upstream.transport.write(data)  # type: ignore[union-attr]  # set by connection_made before the connect call returns


async def serve(fd: int, upstream: str) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    # As the gate does: a token stream cannot wait for Nagle's delayed ACK. Without it the floor would
    # coalesce chunks into fewer segments and look faster than any relay that streams tokens can be.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server = await loop.create_server(lambda: _Client(upstream), sock=sock, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llama_launcher.bench.relay", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="an inherited listening socket")
    parser.add_argument("--upstream", required=True, help="the upstream's unix socket")
    args = parser.parse_args(argv)
    from llama_launcher.bench.processes import raise_fd_limit, run_loop

    raise_fd_limit()
    run_loop(serve(args.fd, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
