"""One gate, several upstreams: the routing core (pure) and the gate in-process against fake llama-servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from gate_fakes import Client, Harness, chat_request, running_gate, sse_body

from llama_direct.refusals import StreamLost, UpstreamTimeout, UpstreamUnavailable
from llama_launcher.gate.holders import MemoryHolders
from llama_launcher.gate.pool import Attempts, load_order, member_key, merge_snapshots


def run(scenario: Callable[[Harness], Awaitable[None]], upstreams: int = 3) -> None:
    async def main() -> None:
        async with running_gate(upstreams=upstreams) as harness:
            await scenario(harness)

    asyncio.run(asyncio.wait_for(main(), 30))


async def ask(harness: Harness, raw: bytes) -> Any:
    client = await Client.open(harness.port)  # type: ignore[arg-type]
    try:
        await client.send(raw)
        return await client.response()
    finally:
        client.close()


def chats(h: Harness) -> list[int]:
    """How many chat requests reached each fake llama-server."""
    return [sum(1 for r in fake.requests if r.target == "/v1/chat/completions") for fake, _ in h.fleet]


def resume_request(token: str, conversation: str) -> bytes:
    return (b"GET /direct/v1/stream?conv_id=" + conversation.encode() + b" HTTP/1.1\r\nHost: g\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n")


# -- the pure core -------------------------------------------------------------------------------


def test_load_order_prefers_the_least_busy_and_rotates_ties() -> None:
    assert load_order([0, 0, 0], 0) == [0, 1, 2]
    assert load_order([0, 0, 0], 1) == [1, 2, 0]
    assert load_order([0, 0, 0], 5) == [2, 0, 1]
    assert load_order([2, 0, 1], 0) == [1, 2, 0]
    assert load_order([1, 0, 0], 1) == [1, 2, 0]
    assert load_order([1, 0, 0], 2) == [2, 1, 0]


def test_member_key_is_stable_and_hides_the_address() -> None:
    assert member_key("http://10.0.0.5:8080") == member_key("http://10.0.0.5:8080")
    assert member_key("http://10.0.0.5:8080") != member_key("http://10.0.0.6:8080")
    assert "10.0.0.5" not in member_key("http://10.0.0.5:8080")


def test_attempts_end_with_the_last_refusal_or_stream_lost_for_a_holder() -> None:
    attempts = Attempts(["a", "b"])  # type: ignore[list-item]
    assert attempts.next() == "a"
    attempts.failed(UpstreamTimeout())
    assert attempts.next() == "b"
    with pytest.raises(UpstreamTimeout):
        attempts.next()
    held = Attempts(["a"], held=True)  # type: ignore[list-item]
    held.next()
    with pytest.raises(StreamLost):
        held.next()
    with pytest.raises(UpstreamUnavailable):
        Attempts([]).next()


def test_merged_health_is_ready_when_any_upstream_is_and_takes_each_model_at_its_best() -> None:
    down = {"model_ready": False, "models": [{"id": "a", "status": "loaded", "vision": False}],
            "slots": {"total": None, "busy": None}, "router": False, "vision": False}
    router = {"model_ready": True, "router": True, "vision": False, "slots": {"total": None, "busy": None},
              "models": [{"id": "a", "status": "unloaded", "vision": False},
                         {"id": "b", "status": "loading", "vision": True}]}
    single = {"model_ready": True, "router": False, "vision": False, "slots": {"total": 4, "busy": 1},
              "models": [{"id": "a", "status": "loaded", "vision": False}]}
    merged = merge_snapshots("a", [down, router, single], [0, 2, 1])
    assert merged["model_ready"] is True
    assert merged["models"] == [{"id": "a", "status": "loaded", "vision": False},
                                {"id": "b", "status": "loading", "vision": True}]
    assert merged["slots"] == {"total": 4, "busy": 1}
    assert merged["router"] is True
    assert [u["ready"] for u in merged["upstreams"]] == [False, True, True]
    assert [u["in_flight"] for u in merged["upstreams"]] == [0, 2, 1]
    nothing = merge_snapshots("a", [down], [0])
    assert nothing["model_ready"] is False and nothing["models"] == []


def test_memory_holders_forget_the_oldest_and_the_expired() -> None:
    async def scenario() -> None:
        holders = MemoryHolders(limit=2, hold=60)
        await holders.put("c1", "x")
        await holders.put("c2", "y")
        await holders.put("c3", "z")
        assert await holders.get("c1") is None
        assert (await holders.get("c2"), await holders.get("c3")) == ("y", "z")
        expired = MemoryHolders(hold=-1)
        await expired.put("c1", "x")
        assert await expired.get("c1") is None

    asyncio.run(scenario())


# -- the gate in front of several fake llama-servers -------------------------------------------------


def test_sequential_requests_spread_round_robin_over_equal_upstreams() -> None:
    async def scenario(h: Harness) -> None:
        for _ in range(6):
            response = await ask(h, chat_request(h.token()))
            assert response.status == 200 and response.raw_body == sse_body(5)
        assert chats(h) == [2, 2, 2]

    run(scenario)


def test_a_busy_upstream_is_passed_over_for_idle_ones() -> None:
    async def scenario(h: Harness) -> None:
        for _, behaviour in h.fleet:
            behaviour.forever, behaviour.delay = True, 0.05
        held = await Client.open(h.port)  # type: ignore[arg-type]
        await held.send(chat_request(h.token()))
        await asyncio.sleep(0.2)
        busy = chats(h).index(1)
        for n, (_, behaviour) in enumerate(h.fleet):
            behaviour.forever = n == busy  # the held stream runs on
        for _ in range(4):
            assert (await ask(h, chat_request(h.token()))).status == 200
        counts = chats(h)
        assert counts[busy] == 1, counts  # the held stream only
        assert sum(counts) == 5
        held.close()

    run(scenario)


def test_a_dead_upstream_costs_the_client_nothing_and_is_then_skipped() -> None:
    async def scenario(h: Harness) -> None:
        dead, _ = h.fleet[0]
        await dead.stop()
        for _ in range(4):
            response = await ask(h, chat_request(h.token()))
            assert response.status == 200 and response.raw_body == sse_body(5)
        assert chats(h)[1] + chats(h)[2] == 4
        health = h.server.pool.members[0].health
        assert health.ready is False

    run(scenario)


def test_a_503_before_the_head_is_retried_on_another_upstream_and_all_503_reaches_the_client() -> None:
    async def scenario(h: Harness) -> None:
        h.fleet[0][1].status = 503
        h.fleet[1][1].status = 503
        for _ in range(3):
            assert (await ask(h, chat_request(h.token()))).status == 200
        assert chats(h)[2] == 3
        h.fleet[2][1].status = 503
        refused = await ask(h, chat_request(h.token()))
        assert refused.status == 503
        assert refused.json()["error"]["type"] == "unavailable_error"

    run(scenario)


def test_a_model_only_one_upstream_serves_is_routed_only_there() -> None:
    async def scenario(h: Harness) -> None:
        h.fleet[1][1].name = "other"
        for member in h.server.pool.members:
            member.health.invalidate()
            member.health.ready = None  # asked afresh, as at start
        from gate_fakes import MODEL  # the grant's model, served by upstreams 0 and 2
        for _ in range(4):
            assert (await ask(h, chat_request(h.token()))).status == 200
        assert chats(h) == [2, 0, 2]
        assert h.server.pool.members[1].health.model == "other"
        assert h.server.pool.members[0].health.model == MODEL

    run(scenario)


def test_resume_goes_back_to_the_upstream_holding_the_conversation() -> None:
    async def scenario(h: Harness) -> None:
        first = chat_request(h.token(conversation_id="c1"), extra=b"X-Conversation-Id: c1\r\n")
        assert (await ask(h, first)).status == 200
        holder = chats(h).index(1)
        for _ in range(3):
            token = h.token(scope="resume", routes=(("GET", "/v1/stream"),), conversation_id="c1")
            assert (await ask(h, resume_request(token, "c1"))).status == 200
        resumes = [sum(1 for r in fake.requests if r.target.startswith("/v1/stream")) for fake, _ in h.fleet]
        assert resumes[holder] == 3 and sum(resumes) == 3

    run(scenario)


def test_a_resume_whose_holder_is_gone_is_stream_lost_and_never_sent_elsewhere() -> None:
    async def scenario(h: Harness) -> None:
        first = chat_request(h.token(conversation_id="c1"), extra=b"X-Conversation-Id: c1\r\n")
        assert (await ask(h, first)).status == 200
        holder = chats(h).index(1)
        await h.fleet[holder][0].stop()
        token = h.token(scope="resume", routes=(("GET", "/v1/stream"),), conversation_id="c1")
        refused = await ask(h, resume_request(token, "c1"))
        assert refused.status == 502
        assert refused.json()["error"]["reason"] == "stream_lost"
        assert not any(r.target.startswith("/v1/stream") for fake, _ in h.fleet for r in fake.requests)

    run(scenario)


def test_a_stream_cut_after_its_head_ends_for_the_client_and_is_not_retried() -> None:
    async def scenario(h: Harness) -> None:
        for _, behaviour in h.fleet:
            behaviour.die_after = 2
        client = await Client.open(h.port)  # type: ignore[arg-type]
        await client.send(chat_request(h.token()))
        response = await client.response()
        assert response.status == 200
        assert not response.raw_body.endswith(b"0\r\n\r\n")
        assert await client.closed()
        assert sum(chats(h)) == 1
        assert [m.in_flight for m in h.server.pool.members] == [0, 0, 0]

    run(scenario)


def test_health_merges_every_upstream_and_names_no_address() -> None:
    async def scenario(h: Harness) -> None:
        await h.fleet[2][0].stop()
        client = await Client.open(h.config.private_socket)
        await client.send(b"GET /health HTTP/1.1\r\nHost: gate\r\n\r\n")
        health = (await client.response()).json()
        client.close()
        assert health["model_ready"] is True
        assert [u["ready"] for u in health["upstreams"]] == [True, True, False]
        assert h.dir not in str(health)
        assert (await ask(h, chat_request(h.token()))).status == 200
        chats_at_the_dead_one = [r for r in h.fleet[2][0].requests if r.target not in ("/health", "/slots", "/props")]
        assert chats_at_the_dead_one == []

    run(scenario)


def test_shaping_takes_the_strictest_limits_of_the_upstreams_a_request_may_reach() -> None:
    """A request handed on after a failure must fit the next upstream too: images only if every one
    reads them, the smallest slot context; an upstream whose /props cannot be read does not narrow them."""
    async def scenario(h: Harness) -> None:
        from gate_fakes import MODEL
        for (_, behaviour), vision, n_ctx in zip(h.fleet, (True, False, True), (4096, 1024, 2048), strict=True):
            behaviour.vision, behaviour.n_ctx = vision, n_ctx
        members = h.server.pool.members
        policy = await h.server.gate.policy_for(members, MODEL)
        assert (policy.vision, policy.context) == (False, 1024)
        assert (await h.server.gate.policy_for([members[0], members[2]], MODEL)).vision is True
        assert (await h.server.gate.policy_for([members[0], members[2]], MODEL)).context == 2048

    run(scenario)


def test_an_upstream_whose_props_cannot_be_read_does_not_narrow_the_limits() -> None:
    async def scenario(h: Harness) -> None:
        from gate_fakes import MODEL
        for (_, behaviour), n_ctx in zip(h.fleet, (4096, 1024, 2048), strict=True):
            behaviour.vision, behaviour.n_ctx = True, n_ctx
        dead, _ = h.fleet[1]
        await dead.stop()
        policy = await h.server.gate.policy_for(h.server.pool.members, MODEL)
        assert (policy.vision, policy.context) == (True, 2048)

    run(scenario)
