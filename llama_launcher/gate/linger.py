"""Closing a client connection in halves, so the answer it was sent is not destroyed by a reset.

A connection the gate ends right after an answer may still have request bytes on their way (a body
refused from its head, a body the broker answered before reading). A socket closed with bytes unread,
or that receives bytes after it closed, makes the kernel send a reset, and a reset makes the client's
kernel drop what the client had not read yet: the answer. So the gate sends its end of the stream
(`write_eof`, once the answer is flushed), keeps reading and dropping what still comes, and closes when
the client closes or after `LINGER_SECONDS` (RFC 9112 section 9.6; nginx's `lingering_close`).
"""

from __future__ import annotations

import asyncio

LINGER_SECONDS = 2.0
"""How long a half-closed connection still reads what its client sends, at most."""


def close_in_halves(transport: asyncio.Transport) -> asyncio.TimerHandle | None:
    """Half-close `transport` and close it whole later; the handle to cancel if it ends before.
    A transport that cannot half-close (TLS) is closed at once, and None returned."""
    if transport.is_closing() or not transport.can_write_eof():
        transport.close()
        return None
    transport.write_eof()
    transport.resume_reading()
    return asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
