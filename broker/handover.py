"""A baseline request that brings the lane grant its client could not use (`UNUSED_GRANT_HEADER`).

Every generating grant holds one of its user's `--streams` from its minting until the gate reports it
(`broker.budget`), and a grant never brought to a gate until it can no longer start. So a client whose
lane request failed before a response head, and that falls back to the baseline at once, would be
refused there (429 `too_many_streams`) by the very grant it gave up. Instead it hands that grant's
token over, and the baseline serves under it: its own token carries the grant's id (`jti`), so it
settles the grant's reservation, within the grant's `max_tokens`. It expires when the grant does, to
the second: the gate remembers a spent id until its token's expiry, so an earlier one would let the
lane's token be spent again after the gate forgot the baseline's.

Whether the grant's one use is still unspent only the gate knows: the baseline's token, with the same
id, spends it there (the lane can no longer use the grant), or is refused as spent (`token_spent`:
the lane request reached the gate after all, and the gate reports that one), and then the baseline
reserves anew. A token this broker did not sign, or of another user, another route or model, or
revoked, is no handover: the baseline reserves anew, as without the header.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from broker.core import BrokerCore
from llama_direct.lanes import LaneRoute
from llama_direct.refusals import Refusal
from llama_direct.tokens import verify

MIN_LEFT_SECONDS = 2
"""What the handed grant must have left to be served under: its token's expiry bounds the baseline's,
and a retry of a gate restart's refusal mints one second later (`broker.baseline`)."""


@dataclass(frozen=True)
class Handover:
    """The grant the baseline serves under: its id, its cap and its expiry (what its reservation covers)."""

    jti: str
    max_tokens: int
    expires_at: int


def handed_grant(core: BrokerCore, token: str | None, *, user: str, route: LaneRoute, model: str,
                 minted_at: float) -> Handover | None:
    """The grant in `token` when the baseline may serve under it: signed by this broker for its gate,
    live for `MIN_LEFT_SECONDS` after `minted_at` (the baseline token's `iat`), the caller's own
    (`sub`), not revoked, single-use, and for this very route and model (what its reservation was made
    for); else None."""
    if token is None:
        return None
    now = core.clock()
    try:
        claims = verify(token, keys=core.keyring.public_keyset(now), audience=core.aud, issuer=core.iss, now=now,
                        leeway=0)
    except Refusal:
        return None
    grant = claims.grant
    revoked_before = core.revocations.to_dict()["not_before"].get(user)
    revoked = revoked_before is not None and claims.iat < revoked_before
    if (claims.sub != user or revoked or grant.uses != 1 or grant.routes != (route.key,) or grant.model != model
            or claims.exp - math.floor(minted_at) < MIN_LEFT_SECONDS):
        return None
    return Handover(claims.jti, grant.max_tokens, claims.exp)
