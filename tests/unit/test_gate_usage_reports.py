"""The gate reports each generating request's usage to the broker once its answer ended (POST /usage on
the control socket): the tokens llama-server reported in its last event, none when the end was not
seen, zero when nothing was generated, and `started` first for a stream that outlives its grant."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from gate_fakes import Client, FakeServer, Harness, Received, chat_request, running_gate

from broker.signing_keys import SigningKey
from llama_launcher.gate.usage_reports import Metered, UsageReporter

Scenario = Callable[[Harness], Awaitable[None]]


def run(scenario: Scenario) -> None:
    async def main() -> None:
        async with running_gate() as harness:
            await scenario(harness)

    asyncio.run(asyncio.wait_for(main(), 60))


async def reports(harness: Harness, count: int) -> list[dict[str, Any]]:
    """The first `count` reports, waited for (they are sent after the answer ends, off its path)."""
    for _ in range(5000):
        if len(harness.usage) >= count:
            break
        await asyncio.sleep(0.01)
    assert len(harness.usage) >= count, harness.usage
    return harness.usage[:count]


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


def test_a_finished_stream_reports_the_usage_of_its_last_event() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.usage = {"completion_tokens": 5, "prompt_tokens": 7, "total_tokens": 12}
        token = h.token()
        client = await Client.open(h.port)
        await client.send(chat_request(token))
        response = await client.response()
        assert response.status == 200 and b'"usage"' in response.body  # relayed as it was
        [report] = await reports(h, 1)
        assert report == {"jti": jti_of(token), "sub": "alice", "model": "smollm2", "route": "chat",
                          "lane": "direct", "phase": "ended", "prompt_tokens": 7, "completion_tokens": 5}
        client.close()

    run(scenario)


def test_a_stream_without_a_usage_counts_as_an_end_not_seen() -> None:
    async def scenario(h: Harness) -> None:
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        assert (await client.response()).status == 200
        [report] = await reports(h, 1)
        assert (report["phase"], report["completion_tokens"]) == ("ended", None)
        client.close()

    run(scenario)


def test_an_upstream_cut_mid_stream_is_an_end_not_seen() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.usage = {"completion_tokens": 5, "prompt_tokens": 7}
        h.behaviour.die_after = 2
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        await client.response()
        [report] = await reports(h, 1)
        assert report["completion_tokens"] is None
        client.close()

    run(scenario)


def test_a_client_that_leaves_is_an_end_not_seen() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever, h.behaviour.delay = True, 0.02
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        await client.reader.readuntil(b"\r\n\r\n")
        client.writer.transport.abort()
        [report] = await reports(h, 1)
        assert (report["phase"], report["completion_tokens"]) == ("ended", None)

    run(scenario)


def test_an_upstream_error_generated_nothing() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.status = 500
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        assert (await client.response()).status == 500
        [report] = await reports(h, 1)
        assert (report["prompt_tokens"], report["completion_tokens"]) == (0, 0)
        client.close()

    run(scenario)


def test_a_stream_that_outlives_its_grant_is_reported_started_first() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.events, h.behaviour.delay = 40, 0.1
        h.behaviour.usage = {"completion_tokens": 40, "prompt_tokens": 3}
        client = await Client.open(h.port)
        await client.send(chat_request(h.token(ttl=1)))
        assert (await client.response(timeout=50)).status == 200
        started, ended = await reports(h, 2)
        assert (started["phase"], started["completion_tokens"]) == ("started", None)
        assert (ended["phase"], ended["completion_tokens"], ended["jti"]) == ("ended", 40, started["jti"])
        client.close()

    run(scenario)


async def refused(h: Harness, request: bytes, status: int) -> None:
    client = await Client.open(h.port)
    await client.send(request)
    assert (await client.response()).status == status
    client.close()


def test_a_request_refused_after_its_grant_was_spent_generated_nothing() -> None:
    """Its grant can never be used again: reported at once, so the broker frees its reservation and its
    user's stream slot now, not 35 s after the grant expires. Its replay, refused at the replay check,
    and a request whose token did not verify report nothing (the grant of the latter is still usable);
    neither does a refused request of a route that generates nothing."""

    async def scenario(h: Harness) -> None:
        token = h.token()
        over_cap = chat_request(token, b'{"messages":[],"stream":true,"max_tokens":100000}')
        await refused(h, over_cap, 400)
        [report] = await reports(h, 1)
        assert report == {"jti": jti_of(token), "sub": "alice", "model": "smollm2", "route": "chat",
                          "lane": "direct", "phase": "ended", "prompt_tokens": 0, "completion_tokens": 0}
        await refused(h, over_cap, 401)  # spent: refused at the replay check
        await refused(h, chat_request(h.token(audience="elsewhere")), 401)
        embeddings = h.token(scope="embeddings", routes=(("POST", "/v1/embeddings"),))
        await refused(h, chat_request(embeddings, b'not json').replace(
            b"/v1/chat/completions", b"/v1/embeddings"), 400)
        fine = h.token()
        await refused(h, chat_request(fine), 200)  # the next report is this one's: none came between
        assert [r["jti"] for r in await reports(h, 2)] == [jti_of(token), jti_of(fine)]

    run(scenario)


def test_a_request_refused_for_its_route_or_headers_settles_its_spent_grant_too() -> None:
    """Refused by the head's check, after the spend: metered by the route the grant names."""

    async def scenario(h: Harness) -> None:
        elsewhere = h.token()
        await refused(h, chat_request(elsewhere).replace(b"/v1/chat/completions", b"/v1/completions"), 403)
        bound = h.token(origin="https://app.example")
        await refused(h, chat_request(bound, extra=b"Origin: https://evil.example\r\n"), 403)
        first, second = await reports(h, 2)
        assert [(r["jti"], r["route"], r["prompt_tokens"], r["completion_tokens"]) for r in (first, second)] == [
            (jti_of(elsewhere), "chat", 0, 0), (jti_of(bound), "chat", 0, 0)]

    run(scenario)


def test_a_revoked_grant_refused_at_the_gate_is_reported_as_nothing_generated() -> None:
    """401 token_revoked comes after the spend: that grant can never be used, so it is reported at once
    and the broker frees its reservation and its user's stream now. A token of the same user that does
    not verify (signed by a key the gate does not trust) reports nothing: a forgery settles no one's
    grant; nor does the revoked grant's replay, refused at the replay check."""

    async def scenario(h: Harness) -> None:
        revoked = h.token()
        forged = h.token(key=SigningKey.generate("EdDSA"))
        h.revocations.revoke("alice", time.time() + 1)
        assert await h.server.keyset.refresh()
        await refused(h, chat_request(forged), 401)
        await refused(h, chat_request(revoked), 401)
        await refused(h, chat_request(revoked), 401)
        fine = h.token(subject="bob")
        await refused(h, chat_request(fine), 200)  # the next report is this one's: none came between
        first, second = await reports(h, 2)
        assert first == {"jti": jti_of(revoked), "sub": "alice", "model": "smollm2", "route": "chat",
                         "lane": "direct", "phase": "ended", "prompt_tokens": 0, "completion_tokens": 0}
        assert second["jti"] == jti_of(fine)

    run(scenario)


def resumable(h: Harness, conversation: str) -> tuple[str, bytes]:
    token = h.token(conversation_id=conversation)
    return token, chat_request(token, extra=b"X-Conversation-Id: " + conversation.encode() + b"\r\n")


async def left_mid_stream(h: Harness, request: bytes) -> None:
    client = await Client.open(h.port)
    await client.send(request)
    await client.reader.readuntil(b"\r\n\r\n")
    client.writer.transport.abort()


def test_a_resume_settles_the_stream_its_first_client_left() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever, h.behaviour.delay = True, 0.02
        h.behaviour.usage = {"completion_tokens": 9, "prompt_tokens": 4}
        token, request = resumable(h, "conv-r")
        await left_mid_stream(h, request)
        [started] = await reports(h, 1)  # held: a resume may still read its end
        assert (started["phase"], started["jti"]) == ("started", jti_of(token))
        h.behaviour.forever = False
        resume = h.token(scope="resume", routes=(("GET", "/v1/stream"),), conversation_id="conv-r")
        client = await Client.open(h.port)
        await client.send(b"GET /direct/v1/stream?conv_id=conv-r&from=0 HTTP/1.1\r\nHost: g\r\n"
                          b"Authorization: Bearer " + resume.encode() + b"\r\n\r\n")
        assert (await client.response()).status == 200
        _, ended = await reports(h, 2)
        assert ended == {**started, "phase": "ended", "prompt_tokens": 4, "completion_tokens": 9}
        client.close()

    run(scenario)


def test_a_stream_left_and_never_resumed_is_an_end_not_seen_after_the_window() -> None:
    async def scenario(h: Harness) -> None:
        h.behaviour.forever, h.behaviour.delay = True, 0.02
        token, request = resumable(h, "conv-n")
        await left_mid_stream(h, request)
        started, ended = await reports(h, 2)
        assert [(r["phase"], r["jti"], r["completion_tokens"]) for r in (started, ended)] == [
            ("started", jti_of(token), None), ("ended", jti_of(token), None)]

    async def main() -> None:
        async with running_gate(resume_window=0.2) as harness:
            await scenario(harness)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_broker_that_cannot_take_reports_is_logged_once_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness) -> None:
        h.usage_status = 503
        for _ in range(3):
            client = await Client.open(h.port)
            await client.send(chat_request(h.token()))
            assert (await client.response()).status == 200
            client.close()
        await reports(h, 3)
        h.usage_status = 204
        client = await Client.open(h.port)
        await client.send(chat_request(h.token()))
        await client.response()
        client.close()
        await reports(h, 4)
        for _ in range(500):
            if any("usage_reports_back" in record.message for record in caplog.records):
                break
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.INFO, logger="llama_launcher.gate.usage_reports"):
        run(scenario)
    failed = [r for r in caplog.records if "usage_report_failed" in r.message and r.levelno == logging.WARNING]
    assert len(failed) == 1 and "status=503" in failed[0].message
    assert any("usage_reports_back" in record.message for record in caplog.records)


def test_reports_of_a_moment_share_one_body_sent_at_once_when_the_gate_stops() -> None:
    """Three ends queued while a long coalescing wait runs: stopping the reporter sends them at once,
    in one body and in order, so none is lost at shutdown."""
    bodies: list[dict[str, Any]] = []

    async def handler(received: Received, writer: asyncio.StreamWriter) -> None:
        bodies.append(json.loads(received.body))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async def main() -> None:
        base = tempfile.mkdtemp(prefix="ur-", dir="/tmp")
        control = FakeServer(os.path.join(base, "control.sock"), handler)
        await control.start()
        try:
            reporter = UsageReporter(control.path, resume_window=1.0, coalesce=3600.0)
            for index in range(3):
                metered = Metered(f"jti-{index}", "alice", "smollm2", "chat", "direct", "chat", None)
                reporter.end(metered, status=502, complete=True, chunked=False)
            await asyncio.sleep(0)
            assert bodies == []  # still waiting for more ends to share the body
            await reporter.aclose()
        finally:
            await control.stop()
            shutil.rmtree(base, ignore_errors=True)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert [[report["jti"] for report in body["reports"]] for body in bodies] == [["jti-0", "jti-1", "jti-2"]]
    assert {report["completion_tokens"] for report in bodies[0]["reports"]} == {0}
