"""Named users end to end: two users stream through the lane as themselves, then `users remove`
ends one's session and refuses a grant that user already holds; a user's own `--streams` limit caps
them and nobody else; on the real gate and llama-server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jwt
import pytest
from stack import Stack

from llama_direct.lanes import UNUSED_GRANT_HEADER

pytestmark = pytest.mark.real

CHAT = {"messages": [{"role": "user", "content": "Say hi."}], "stream": True, "max_tokens": 8, "temperature": 0}


def _users(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    """The real command, in its own process, while serve runs on the same data dir."""
    done = subprocess.run([sys.executable, "-m", "llama_launcher.cli", "users", *argv, "--data-dir",
                           str(stack.data_dir)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


def _add(stack: Stack, name: str, *limits: str) -> dict[str, str]:
    shown = dict(line.split(": ", 1) for line in _users(stack, "add", name, *limits).stdout.strip().splitlines())
    assert shown["login link"].startswith(stack.base + "/?token=ldt_")  # the address serve printed
    return shown


def _stream(grant: dict[str, Any]) -> httpx.Response:
    """One lane request with `grant`: the whole answer read."""
    headers = {"Authorization": f"Bearer {grant['token']}"}
    if grant["grant"].get("origin"):  # a browser's grant is bound to the page's origin, which it sends
        headers["Origin"] = grant["grant"]["origin"]
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=CHAT, timeout=120,
                      headers=headers) as answer:
        answer.read()
    return answer


def _sub(grant: dict[str, Any]) -> str:
    return str(jwt.decode(grant["token"], options={"verify_signature": False})["sub"])


def _negotiate(client: httpx.Client, base: str, **headers: str) -> dict[str, Any]:
    answer = client.post(base + "/direct-stream", json={}, headers={"Sec-Fetch-Site": "same-origin", **headers})
    assert answer.status_code == 200, answer.text
    grant: dict[str, Any] = answer.json()
    assert grant["supported"] is True
    return grant


def test_two_users_stream_as_themselves_and_a_removal_ends_one(stack: Stack) -> None:
    ann, bob = _add(stack, "Ann"), _add(stack, "bob")
    listed = [json.loads(line) for line in _users(stack, "list", "--json").stdout.splitlines()]
    ids = {row["name"]: row["id"] for row in listed}

    with httpx.Client(timeout=30) as browser:  # Ann: a browser, logged in by her link
        assert browser.get(ann["login link"], follow_redirects=False).status_code == 303
        assert browser.get(stack.base + "/v1/me").json() == {"sub": ids["ann"], "name": "ann", "owner": False}
        grant = _negotiate(browser, stack.base)
        assert _sub(grant) == ids["ann"]
        answer = _stream(grant)
        assert answer.status_code == 200 and b"data: [DONE]" in answer.content

        with httpx.Client(timeout=30) as script:  # Bob: a script with his API key
            bob_grant = _negotiate(script, stack.base, Authorization=f"Bearer {bob['API key']}")
            assert _sub(bob_grant) == ids["bob"]
            assert _stream(bob_grant).status_code == 200

            held = [_negotiate(browser, stack.base) for _ in range(3)]  # grants Ann holds, unspent
            removed = _users(stack, "remove", "ann")
            assert "not running" not in removed.stderr  # serve was told at once

            me = browser.get(stack.base + "/v1/me")
            assert me.status_code == 401 and me.json()["error"]["reason"] == "login_required"
            refusals = [_stream(grant) for grant in held]
            statuses = [(r.status_code, r.json()["error"]["reason"] if r.status_code != 200 else None)
                        for r in refusals]
            assert statuses[-2:] == [(401, "token_revoked")] * 2, statuses  # the gate refuses what she holds
            again = script.post(stack.base + "/direct-stream", json={},
                                headers={"Authorization": f"Bearer {ann['API key']}"})
            assert again.status_code == 401

            after = _negotiate(script, stack.base, Authorization=f"Bearer {bob['API key']}")
            assert _stream(after).status_code == 200  # Bob goes on


@contextmanager
def _held(grant: dict[str, Any]) -> Iterator[httpx.Response]:
    """A lane stream open (its head read, its body not): it counts against its user until left."""
    body = {**CHAT, "max_tokens": 64}
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {grant['token']}"}) as answer:
        yield answer


def test_a_users_own_stream_limit_caps_them_and_nobody_else(stack: Stack) -> None:
    """Dee has `--streams 1`: while her stream runs, her next negotiation is 429 too_many_streams, while
    Eve, with no limit of her own, has two at once (serve's --streams-per-user is 4) and streams beside
    Dee's; once the gate reports Dee's stream's end (her client left), she gets a grant again."""
    dee, eve = _add(stack, "dee", "--streams", "1"), _add(stack, "eve")
    with httpx.Client(timeout=30) as script:
        def grant(who: dict[str, str]) -> dict[str, Any]:
            return _negotiate(script, stack.base, Authorization=f"Bearer {who['API key']}")

        mine = grant(dee)
        assert mine["grant"]["streams"] == 1 and "streams" not in grant(eve)["grant"]
        with _held(grant(eve)) as first, _held(grant(eve)) as second:
            assert (first.status_code, second.status_code) == (200, 200)
        with _held(mine) as first:
            assert first.status_code == 200
            refused = script.post(stack.base + "/direct-stream", json={},
                                  headers={"Authorization": f"Bearer {dee['API key']}"})
            assert (refused.status_code, refused.json()["error"]["reason"]) == (429, "too_many_streams")
            beside = _stream(grant(eve))
            assert beside.status_code == 200 and b"data: [DONE]" in beside.content
        while not _usage(script, stack, dee)["rows"]:  # her first stream's end, reported by the gate
            time.sleep(0.1)
        answer = _stream(grant(dee))
        assert answer.status_code == 200 and b"data: [DONE]" in answer.content


def test_a_grant_the_gate_refused_after_spending_it_frees_its_stream_at_once(stack: Stack) -> None:
    """Gil has `--streams 1`: her lane request asks for more tokens than her grant allows, and the gate
    refuses it once it has spent the grant. Reported as nothing generated, the grant frees her stream at
    once, not 35 s after it expires: she negotiates again as soon as the report settled it (its ledger row,
    0 tokens), and streams."""
    gil = _add(stack, "gil", "--streams", "1")
    with httpx.Client(timeout=30) as script:
        def grant() -> dict[str, Any]:
            return _negotiate(script, stack.base, Authorization=f"Bearer {gil['API key']}")

        spent = grant()
        over = httpx.post(spent["url"] + "/v1/chat/completions", json={**CHAT, "max_tokens": 100_000}, timeout=120,
                          headers={"Authorization": f"Bearer {spent['token']}"})
        assert (over.status_code, over.json()["error"]["reason"]) == (400, "length_over_cap"), over.text
        while not (rows := _usage(script, stack, gil)["rows"]):  # the refusal's report, settled
            time.sleep(0.1)
        assert [(row["requests"], row["completion_tokens"]) for row in rows] == [(1, 0)], rows
        answer = _stream(grant())
        assert answer.status_code == 200 and b"data: [DONE]" in answer.content


def test_a_revoked_grant_the_gate_refused_frees_its_stream_at_once(stack: Stack) -> None:
    """Hal has `--streams 3` and holds three grants when she logs out (`POST /direct-stream/revoke`, her
    API key still hers): the gate refuses those it has the revocation for (401 token_revoked) after
    spending them, and reports each as nothing generated. So once all three are settled (her ledger: three
    requests) she negotiates and streams at once, not 35 s after they expire. Without those reports the
    ledger never gets there."""
    hal = _add(stack, "hal", "--streams", "3")
    key = {"Authorization": f"Bearer {hal['API key']}"}
    with httpx.Client(timeout=30) as script:
        held = [_negotiate(script, stack.base, **key) for _ in range(3)]
        assert script.post(stack.base + "/direct-stream/revoke", headers=key).status_code == 200
        answers = [_stream(grant) for grant in held]
        assert (answers[-1].status_code, answers[-1].json()["error"]["reason"]) == (401, "token_revoked")
        while sum(row["requests"] for row in _usage(script, stack, hal)["rows"]) < 3:
            time.sleep(0.1)
        answer = _stream(_negotiate(script, stack.base, **key))
        assert answer.status_code == 200 and b"data: [DONE]" in answer.content


def test_the_baseline_serves_under_a_grant_the_lane_never_saw(stack: Stack) -> None:
    """Ivy has `--streams 1` and a grant whose lane request never reached the gate. Her fallback to the
    baseline is refused (too_many_streams) on its own, and served when it hands that grant's token over
    (`X-Unused-Grant`): the gate spends the grant's one use (the lane now refuses it as spent) and reports
    the baseline's end under it, which frees her stream: she negotiates and streams again."""
    ivy = _add(stack, "ivy", "--streams", "1")
    key = {"Authorization": f"Bearer {ivy['API key']}"}
    with httpx.Client(timeout=120) as script:
        unused = _negotiate(script, stack.base, **key)
        alone = script.post(stack.base + "/v1/chat/completions", json=CHAT, headers=key)
        assert (alone.status_code, alone.json()["error"]["reason"]) == (429, "too_many_streams")
        handed = script.post(stack.base + "/v1/chat/completions", json=CHAT,
                             headers={**key, UNUSED_GRANT_HEADER: unused["token"]})
        assert handed.status_code == 200 and b"data: [DONE]" in handed.content, handed.text
        late = _stream(unused)
        assert (late.status_code, late.json()["error"]["reason"]) == (401, "token_spent")
        while not _usage(script, stack, ivy)["rows"]:  # the baseline's end, reported under her grant
            time.sleep(0.1)
        answer = _stream(_negotiate(script, stack.base, **key))
        assert answer.status_code == 200 and b"data: [DONE]" in answer.content


def _usage(client: httpx.Client, stack: Stack, who: dict[str, str]) -> dict[str, Any]:
    answer = client.get(stack.base + "/v1/usage", headers={"Authorization": f"Bearer {who['API key']}"})
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found
