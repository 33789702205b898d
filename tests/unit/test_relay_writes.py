"""The relay's response half without sockets: how many writes the client gets, and what they carry."""

from __future__ import annotations

from typing import Any

from llama_direct.refusals import Refusal
from llama_launcher.gate.relay import DechunkingRelay, Relay

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENT = b'data: {"choices":[]}\n\n'
FIRST = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
LAST = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


class Recorder:
    """A transport and a `RelayClient` in one: it records each write and how the relay ended."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.heads: list[bytes] = []
        self.done: list[bool] = []
        self.failed: list[Refusal] = []
        self.transport: Any = self
        self.http10 = False
        self.close_after = False
        self.aborted = False
        self.began = 0

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def relay_head(self, head: bytes) -> None:
        self.heads.append(head)
        self.writes.append(head)

    def relay_body_began(self) -> None:
        self.began += 1

    def relay_done(self, close: bool) -> None:
        self.done.append(close)

    def relay_failed(self, refusal: Refusal) -> None:
        self.failed.append(refusal)


def _relay(kind: type[Relay] = Relay) -> tuple[Relay, Recorder]:
    client, upstream = Recorder(), Recorder()
    relay = kind(client, None, strip_cors=False, head_only=False)
    relay.connection_made(upstream)  # type: ignore[arg-type]
    return relay, client


def test_body_bytes_read_with_the_head_go_out_in_the_heads_write() -> None:
    relay, client = _relay()
    relay.data_received(HEAD + FIRST)
    assert len(client.writes) == 1
    assert client.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and client.writes[0].endswith(b"\r\n\r\n" + FIRST)
    relay.data_received(LAST)
    assert client.writes[1:] == [LAST] and client.done == [False]
    assert client.began == 1, "the first body byte is reported once (time to first byte)"


def test_a_whole_answer_in_one_read_is_one_write_and_done() -> None:
    relay, client = _relay()
    relay.data_received(HEAD + FIRST + LAST)
    assert len(client.writes) == 1 and client.writes[0].endswith(FIRST + LAST)
    assert client.done == [False] and not client.failed


def test_a_head_alone_is_written_at_once() -> None:
    """llama-server sends the head before prompt processing; the client must not wait for a token."""
    relay, client = _relay()
    relay.data_received(HEAD)
    assert len(client.writes) == 1 and client.writes[0].endswith(b"\r\n\r\n")
    relay.data_received(FIRST)
    assert client.writes[1:] == [FIRST]


def test_broken_framing_after_the_head_sends_the_head_then_fails() -> None:
    relay, client = _relay()
    relay.data_received(HEAD + b"zz\r\nnot a chunk\r\n")
    assert len(client.heads) == 1 and client.heads[0].endswith(b"\r\n\r\n")
    assert len(client.failed) == 1


def test_an_http10_client_still_gets_the_body_unframed_after_the_head() -> None:
    relay, client = _relay(DechunkingRelay)
    client.http10 = True
    relay.data_received(HEAD + FIRST)
    assert client.writes[1:] == [EVENT]

