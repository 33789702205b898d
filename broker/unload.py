"""The owner's unload of a router's model (`llama_direct.lanes.MODEL_UNLOAD_PATH`), on the standalone broker.

An unload ends every reply that model is giving, whoever asked for it, so only the owner (the access
token, or the owner's session) may: never a named user, never a host app's user (a mounted broker has
no owner and no such route). The broker judges who and which model; the gate, which alone holds
llama-server's key, asks the router (`llama_direct.control.GATE_UNLOAD_PATH`).
"""

from __future__ import annotations

from broker.access import Caller
from broker.bodies import parsed
from broker.core import BrokerCore
from llama_direct.control import parse_unload_request
from llama_direct.refusals import (
    BAD_UNLOAD,
    NOT_A_ROUTER,
    OWNER_ONLY,
    RequestRefusal,
    UnknownModel,
    UpstreamUnavailable,
)
from llama_direct.tokens import OWNER


def may_unload(caller: Caller) -> bool:
    """The owner only: the access token's subject with no user record (a named user always has a name)."""
    return caller.user == OWNER and caller.name is None


def unload_model_name(body: bytes) -> str:
    """The model an unload names: `{"model": NAME}` (`llama_direct.control.unload_request`), else 400."""
    return parsed(body, parse_unload_request, BAD_UNLOAD)


async def unload(core: BrokerCore, caller: Caller, body: bytes) -> dict[str, str]:
    """Unload `body`'s model for the owner: 403 for anyone else, 400 for a bad body or a model this
    broker does not serve, 409 without a router, 502 when the router did not unload it."""
    if not may_unload(caller):
        raise RequestRefusal(OWNER_ONLY)
    model = unload_model_name(body)
    health = await core.gate.fresh()
    if not health.router:
        raise RequestRefusal(NOT_A_ROUTER)
    if model not in core.allowed_models(health):
        raise UnknownModel(model)
    status = await core.gate.unload(model)
    if status == 404:
        raise UnknownModel(model)
    if status == 409:
        raise RequestRefusal(NOT_A_ROUTER)
    if status != 204:
        raise UpstreamUnavailable()
    return {"model": model, "status": "unloaded"}
