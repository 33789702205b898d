"""Model loads charged where they happen: at the gate, as it forwards the request that causes one.

A load stalls every user of a router for its duration, so the broker limits loads per user
(`--loads-per-minute`). It once charged them at negotiation, when its health poll listed the model
`unloaded`: a grant minted while its model was loaded cost nothing, yet used after an eviction it
loaded the model again (44 loads in 61 s with a limit of 2, alternating two models). The gate is the
one place that sees the model's state as a request goes out, so it asks the router afresh, and when
the request will load its model it charges the load to the token's `sub` at the broker (`POST
/loads`, where the other rate counters live, in Redis with a fleet) before forwarding. Over the
limit the broker says 429 and the gate refuses the request with it: the load never starts.

One load, one charge: once a load is charged, other requests for the same model ride on it until a
fresh read (the one each routed request makes, whatever its model) shows the load under way, or
`OPEN_SECONDS` pass (a load that never started, say). Settling on every read matters: alternating two
models, the read made for one is what shows the other's load happened, so its next load is charged.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from llama_direct.control import LOADS_PATH, load_charge
from llama_direct.refusals import BrokerUnavailable, RateLimited
from llama_launcher.gate.pool import Member

OPEN_SECONDS = 10.0
"""How long a charged load covers later requests for its model while the router still lists it
`unloaded`: a router starts a load as soon as the request reaches it, so this is generous."""
CHARGE_TIMEOUT = 2.0


class OpenLoads:
    """Pure: the models whose load is charged and not yet seen under way, with when it was charged."""

    def __init__(self, window: float = OPEN_SECONDS) -> None:
        self.window = window
        self._open: dict[str, float] = {}

    def needs_charge(self, model: str, now: float) -> bool:
        charged = self._open.get(model)
        return charged is None or now - charged > self.window

    def charged(self, model: str, now: float) -> None:
        self._open[model] = now

    def under_way(self, model: str) -> None:
        """The router lists the model loading or loaded: the next `unloaded` is another load."""
        self._open.pop(model, None)


async def will_load(members: Sequence[Member], model: str) -> bool:
    """Whether sending a request for `model` to `members` makes a router load it: each of them is a
    router that lists it `unloaded` now (a single-model llama-server has no status and loads nothing).
    Asked afresh: a poll may be half a second old, and an eviction in between is exactly how a stale
    state let loads through uncharged."""
    if not members:
        return False
    for member in members:
        if await member.health.model_status(model) != "unloaded":
            return False
    return True


class LoadCharger:
    """Charges the loads this gate's requests cause at the broker, over its control socket."""

    def __init__(self, control_socket: str) -> None:
        self.open = OpenLoads()
        self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=control_socket),
                                         base_url="http://broker", timeout=CHARGE_TIMEOUT)

    async def charge(self, members: Sequence[Member], model: str, user: str, now: float) -> bool:
        """Before a chat for `model` goes to `members`: nothing if it loads nothing, else one of
        `user`'s loads (`RateLimited` past the limit; `BrokerUnavailable` if the broker cannot say).
        True when this request starts a load (one that rides on a load under way is not another)."""
        loads = await will_load(members, model)
        self._settle(members)
        if not loads:
            self.open.under_way(model)  # loading or loaded somewhere: a later `unloaded` is a new load
            return False
        if not self.open.needs_charge(model, now):
            return False
        try:
            answer = await self._client.post(LOADS_PATH, json=load_charge(user, model))
        except httpx.HTTPError:
            raise BrokerUnavailable() from None
        if answer.status_code == 429:
            retry_after = answer.headers.get("retry-after", "")
            raise RateLimited(int(retry_after) if retry_after.isdigit() else 60)
        if answer.status_code != 204:
            raise BrokerUnavailable()
        self.open.charged(model, now)
        return True

    def _settle(self, members: Sequence[Member]) -> None:
        """Every model a router just listed as loading or loaded: its charged load is under way."""
        for member in members:
            for name, state in member.health.models.items():
                if state.status in ("loading", "loaded"):
                    self.open.under_way(name)

    async def aclose(self) -> None:
        await self._client.aclose()
