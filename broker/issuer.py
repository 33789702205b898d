"""Who signs a lane token and for whom, handed to negotiation by the broker's state.

A value, not a service: `BrokerCore.issuer()` picks the current key (rotation moves on there), so
that `negotiate` stays pure and costs one signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.signing_keys import SigningKey


@dataclass(frozen=True)
class Issuer:
    """Who signs and for whom: the broker's current key, its id (`iss`) and the gate's (`aud`)."""

    key: SigningKey
    issuer: str
    audience: str
