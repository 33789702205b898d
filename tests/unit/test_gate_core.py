"""The gate's token check: when a use is spent, and the start cut-off that guards a restart."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import pytest

from broker.signing_keys import SigningKey
from llama_direct.keys import PublicKeySet
from llama_direct.refusals import IssuedBeforeGateStart, TokenSpent
from llama_direct.replay import Revocations
from llama_direct.tokens import Grant, mint
from llama_launcher.gate.config import GateConfig
from llama_launcher.gate.core import Gate, start_cut_off
from llama_launcher.gate.scope import RequestHead

KEY = SigningKey.generate("EdDSA")
CONFIG = GateConfig(
    audience="gate", issuer="broker", broker_socket="/b", control_socket="/c", private_socket="/p",
    model="m",
)


@dataclass
class FixedKeys:
    """What `Gate` needs of a `KeySet`: the keys it trusts and the revocations, no pulls."""

    trusted: PublicKeySet = field(default_factory=lambda: PublicKeySet.from_jwks({"keys": [dict(KEY.public_jwk)]}))
    revocations: Revocations = field(default_factory=Revocations)
    sources: tuple[()] = ()

    async def refresh_for_unknown_kid(self) -> bool:
        return False


def gate(started_at: float) -> Gate:
    return Gate(CONFIG, pool=None, keyset=FixedKeys(), started_at=started_at)  # type: ignore[arg-type]


def head(token: str) -> RequestHead:
    return RequestHead("POST", b"/direct/v1/chat/completions", [(b"authorization", b"Bearer " + token.encode())])


def token(now: float) -> str:
    grant = Grant(routes=(("POST", "/v1/chat/completions"),), model="m", max_tokens=8)
    return mint(KEY, issuer="broker", audience="gate", subject="alice", scope="chat", grant=grant, now=now).token


@pytest.mark.parametrize(("started", "cut_off"), [(100.0, 100), (100.2, 101), (100.999, 101), (101.0, 101)])
def test_the_start_cut_off_rounds_up_to_the_next_whole_second(started: float, cut_off: int) -> None:
    assert start_cut_off(started) == cut_off


def test_a_token_spent_in_the_second_of_a_restart_cannot_be_replayed_across_it() -> None:
    """iat is whole seconds: with a cut-off rounded down, a token minted at S.1, spent on the old gate
    and replayed on a gate restarted at S.5 would pass, since the new replay store never saw it."""
    second = math.floor(time.time())
    spent = token(second + 0.1)
    before = gate(second - 10)
    asyncio.run(before.authorize(head(spent), "direct"))
    with pytest.raises(TokenSpent):
        asyncio.run(before.authorize(head(spent), "direct"))
    restarted = gate(second + 0.5)
    with pytest.raises(IssuedBeforeGateStart):
        asyncio.run(restarted.authorize(head(spent), "direct"))
    asyncio.run(restarted.authorize(head(token(second + 1.0)), "direct"))  # what the broker mints once it knows


def test_the_use_is_spent_by_authorize_itself() -> None:
    """Verification spends the use: whatever is refused after it, the token cannot come back."""
    fresh = token(time.time())
    g = gate(time.time() - 10)
    claims, _metered, _granted = asyncio.run(g.authorize(head(fresh), "direct"))
    assert claims.grant.uses == 1
    with pytest.raises(TokenSpent):
        asyncio.run(g.authorize(head(fresh), "direct"))
