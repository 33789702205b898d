"""The gate's usage reports travel in bodies of several (`usage_batches`): the reports of a moment share one
`POST /usage`, in order, each body within what the broker reads, and the broker's reader gives back
exactly what was packed."""

from __future__ import annotations

import json

from llama_direct.budgets import UsageReport
from llama_direct.control import MAX_USAGE_BODY_BYTES, parse_usage_batch, usage_batches


def report(index: int, completion: int | None = 5) -> UsageReport:
    return UsageReport(f"jti-{index}", "alice", "smollm2", "chat", "direct", "ended", 7, completion)


def test_reports_share_one_body_and_read_back_in_order() -> None:
    reports = [report(index, None if index == 2 else index) for index in range(5)]
    [body] = usage_batches(reports)
    assert parse_usage_batch(json.loads(body)) == reports


def test_no_reports_make_no_body() -> None:
    assert usage_batches([]) == []


def test_bodies_are_cut_at_the_limit_and_keep_the_order() -> None:
    reports = [report(index) for index in range(40)]
    one = len(usage_batches(reports[:1])[0])
    bodies = usage_batches(reports, limit=one * 3)
    assert len(bodies) > 1 and all(len(body) <= one * 3 for body in bodies)
    read = [parse_usage_batch(json.loads(body)) for body in bodies]
    assert [found for batch in read if batch is not None for found in batch] == reports


def test_the_largest_report_fits_one_body() -> None:
    """Five names of 512 characters, each escaped to 12 bytes: still within what the broker reads."""
    name = "\U0001f600" * 512
    largest = UsageReport(name, name, name, name, name, "started", 10**12, 10**12)
    [body] = usage_batches([largest])
    assert len(body) <= MAX_USAGE_BODY_BYTES
    assert parse_usage_batch(json.loads(body)) == [largest]
    bodies = usage_batches([largest] * 3)
    assert len(bodies) == 2 and all(len(body) <= MAX_USAGE_BODY_BYTES for body in bodies)
