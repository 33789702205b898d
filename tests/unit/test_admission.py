"""The public port's caps and the client's address (`gate/admission.py`)."""

from __future__ import annotations

import pytest

from llama_launcher.gate.admission import Admission, connection_cap, forwarded_client
from llama_launcher.gate.config import GateConfig

TRUSTED = frozenset({"10.0.0.1", "10.0.0.2"})
CONFIG = GateConfig(
    audience="gate", issuer="broker", broker_socket="/b", control_socket="/c", private_socket="/p",
    model="m", max_connections=10, max_pending_per_address=2, trusted_proxies=("10.0.0.1",),
)


@pytest.mark.parametrize(("peer", "headers", "client"), [
    ("198.51.100.7", [b"203.0.113.9"], "198.51.100.7"),             # not a proxy: the header is a lie
    ("10.0.0.1", [b"203.0.113.9"], "203.0.113.9"),
    ("10.0.0.1", [b"1.2.3.4, 203.0.113.9"], "203.0.113.9"),          # the left part is the client's to forge
    ("10.0.0.1", [b"203.0.113.9, 10.0.0.2"], "203.0.113.9"),         # a chain of trusted proxies
    ("10.0.0.1", [b"1.2.3.4", b"203.0.113.9"], "203.0.113.9"),       # two header lines: one list
    ("10.0.0.1", [b"not-an-address"], "10.0.0.1"),
    ("10.0.0.1", [], "10.0.0.1"),
])
def test_the_client_address(peer: str, headers: list[bytes], client: str) -> None:
    assert forwarded_client(peer, headers, TRUSTED) == client


def test_the_total_cap_stays_within_the_descriptor_limit() -> None:
    assert connection_cap(4096, 1_048_576) == 4096
    assert connection_cap(4096, 1024) == (1024 - 64) // 2


def test_the_caps_answer_503_and_the_pending_count_follows_enter_and_leave() -> None:
    admission = Admission(CONFIG, descriptors=1 << 20)
    assert admission.admit(10, "1.1.1.1").code == "too_many_connections"  # type: ignore[union-attr]
    admission.enter("1.1.1.1")
    admission.enter("1.1.1.1")
    assert admission.admit(2, "1.1.1.1").code == "too_many_pending"  # type: ignore[union-attr]
    assert admission.admit(2, "10.0.0.1") is None  # a trusted proxy's heads are not counted per address
    admission.leave("1.1.1.1")
    assert admission.admit(2, "1.1.1.1") is None
    admission.leave("1.1.1.1")
    assert admission.pending == {}
