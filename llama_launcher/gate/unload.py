"""The broker's unload of a router's model, asked on the gate's private socket (`control.GATE_UNLOAD_PATH`).

Only the gate holds llama-server's key, and no lane request ever reaches `/models/*`
(`llama_direct.lanes.NEVER_ROUTED`), so the owner's unload (the broker's `MODEL_UNLOAD_PATH`, which
alone judges who may) reaches each router here. The gate asks every router that lists the model,
each afresh, since a poll may be half a second old.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from llama_direct.control import parse_unload_request
from llama_direct.refusals import Refusal
from llama_launcher.gate.pool import Member
from llama_launcher.gate.upstream import send_request

UNLOAD_TIMEOUT = 30.0
"""A router answers an unload once its child has stopped: a child mid-reply takes a moment."""


async def unload(members: Sequence[Member], body: bytes) -> int:
    """The status the broker hears: 204 unloaded (or it was not loaded), 400 a body that is not
    `unload_request`'s, 404 no router lists the model, 409 no upstream is a router, 502 a router failed."""
    try:
        model = parse_unload_request(json.loads(body))
    except (ValueError, RecursionError):
        model = None
    if model is None:
        return 400
    states = [(member, await member.health.model_status(model)) for member in members]
    routers = [(member, state) for member, state in states if member.health.router]
    if not routers:
        return 409
    listing = [member for member, state in routers if state is not None]
    if not listing:
        return 404
    done = await asyncio.gather(*(_unload_one(member, model) for member in listing))
    return 204 if all(done) else 502


async def _unload_one(member: Member, model: str) -> bool:
    """Whether `model` is unloaded on this router now: asked to unload, or found unloaded after all
    (llama-server answers 400 "model is not running" for one that is not loaded)."""
    try:
        status = await send_request(member.upstream, "POST", "/models/unload", timeout=UNLOAD_TIMEOUT,
                                    body=json.dumps({"model": model}).encode())
    except Refusal:
        return False
    return status == 200 or await member.health.model_status(model) == "unloaded"
