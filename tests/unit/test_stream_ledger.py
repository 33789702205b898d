"""The per-user stream cap and the resume window's bookkeeping (pure)."""

from __future__ import annotations

import pytest

from llama_direct.refusals import RequestRefusal
from llama_launcher.gate.stream_ledger import Stream, StreamLedger


def _ledger(limit: int = 2) -> StreamLedger[str]:
    return StreamLedger(limit=limit, uncapped=frozenset({"owner"}), window=30.0)


def _held(ledger: StreamLedger[str], user: str, conversation: str | None) -> Stream[str]:
    stream = ledger.open(user, conversation)
    stream.holder = "upstream-1"
    return stream


def test_a_user_past_the_limit_is_refused_and_one_ending_makes_room() -> None:
    ledger = _ledger()
    first, _ = ledger.open("alice", None), ledger.open("alice", None)
    with pytest.raises(RequestRefusal) as refused:
        ledger.open("alice", None)
    assert (refused.value.status, refused.value.code) == (429, "too_many_streams")
    ledger.open("bob", None)  # another user has a count of their own
    ledger.close(first, finished=True, now=0.0)
    ledger.open("alice", None)


def test_the_owner_is_never_refused() -> None:
    ledger = _ledger(limit=1)
    for _ in range(10):
        ledger.open("owner", None)


def test_a_conversation_left_unfinished_is_an_orphan_that_still_counts() -> None:
    ledger = _ledger(limit=1)
    stream = _held(ledger, "alice", "c1")
    orphan = ledger.close(stream, finished=False, now=100.0)
    assert orphan is not None and (orphan.conversation, orphan.holder, orphan.deadline) == ("c1", "upstream-1", 130.0)
    with pytest.raises(RequestRefusal):
        ledger.open("alice", None)
    assert ledger.expire(129.9) == []
    assert ledger.expire(130.0) == [orphan]
    assert ledger.expire(200.0) == []
    ledger.open("alice", None)  # the expired orphan no longer counts


def test_a_resume_adopts_the_orphan_and_leaving_again_restarts_the_window() -> None:
    ledger = _ledger(limit=1)
    ledger.close(_held(ledger, "alice", "c1"), finished=False, now=0.0)
    resumed = ledger.open("alice", "c1")  # at the limit, but it takes the orphan's place
    resumed.holder = "upstream-1"
    assert ledger.expire(31.0) == []
    again = ledger.close(resumed, finished=False, now=20.0)
    assert again is not None and again.deadline == 50.0
    assert ledger.expire(49.0) == [] and ledger.expire(50.0) == [again]
    assert ledger.counts == {}


def test_a_cancel_drops_the_window_and_the_count() -> None:
    ledger = _ledger(limit=1)
    ledger.close(_held(ledger, "alice", "c1"), finished=False, now=0.0)
    ledger.cancelled("c1")
    assert ledger.expire(1000.0) == [] and ledger.counts == {}


def test_a_stream_finished_or_never_connected_or_not_resumable_leaves_no_orphan() -> None:
    ledger = _ledger()
    assert ledger.close(_held(ledger, "alice", "c1"), finished=True, now=0.0) is None
    assert ledger.close(ledger.open("alice", "c2"), finished=False, now=0.0) is None  # no upstream took it
    assert ledger.close(_held(ledger, "alice", None), finished=False, now=0.0) is None
    assert ledger.orphans == {} and ledger.counts == {}
