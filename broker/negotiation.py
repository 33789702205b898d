"""`/direct-stream`: from what a client asks, the server's policy and the gate's health, to an answer.

Pure: no I/O and no clock. The app hands in the options (`broker.negotiation_options`), the policy
(`broker.policy`), the gate's last health (`broker.gate_health`) and the models it allows, the
conversation book (`broker.conversations`), the signer (`broker.issuer`) and `now`, so that a
negotiation costs one signature and nothing else on its hot path. This module holds only the
decision: which route, model, cap and conversation a grant names, or why the lane is off.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.conversations import Conversations
from broker.gate_health import GateHealth
from broker.issuer import Issuer
from broker.models import choose_model
from broker.negotiation_options import Options
from broker.policy import Policy
from llama_direct.documents import Granted, NegotiationAnswer, Unsupported
from llama_direct.lanes import LaneRoute
from llama_direct.refusals import CONVERSATION_NOT_OWNED, RequestRefusal
from llama_direct.tokens import Grant, mint

UNSUPPORTED_MESSAGES = {
    "disabled": "The direct lane is turned off on this server.",
    "gate_down": "The gate is not answering right now.",
    "model_loading": "The model is still loading.",
}


def unsupported(reason: str, policy: Policy, route: LaneRoute) -> Unsupported:
    return Unsupported(
        supported=False, route=route.name, reason=reason, message=UNSUPPORTED_MESSAGES[reason],
        fallback_url=policy.fallback_for(route),
    )


def unsupported_reason(enabled: bool, health: GateHealth) -> str | None:
    if not enabled:
        return "disabled"
    if not health.up:
        return "gate_down"
    if not health.model_ready:
        return "model_loading"
    return None


def negotiate(
    options: Options,
    *,
    user: str,
    origin: str | None,
    url: str,
    policy: Policy,
    health: GateHealth,
    allowed: Sequence[str],
    enabled: bool,
    conversations: Conversations,
    system_prompt: str | None = None,
    issuer: Issuer,
    now: float,
    jti: str | None = None,
) -> NegotiationAnswer:
    """The answer to one `/direct-stream`; raises `RequestRefusal` for a conversation not the user's,
    or `UnknownModel` for a model the user may not use (even with the lane off: the fallback would
    answer with another model). `allowed` is the models the user may use, the default first
    (`BrokerCore.allowed_models`, computed once per health answer). `jti`: the grant's id, when a budget
    was reserved under it (`broker.budget`)."""
    model = choose_model(options.model, allowed)
    lane = options.lane
    reason = unsupported_reason(enabled, health)
    if reason is not None:
        return unsupported(reason, policy, lane)
    named = options.resume if options.resume is not None else options.cancel
    conversation_id: str | None = None
    if named is not None:  # a route that continues a conversation (`Options` ties the two): only its owner's
        conversation_id = _owned(named, user, conversations, now)
    elif lane.opens_conversation and options.resumable:
        conversation_id = conversations.open(user, now)
    scope = lane.scope
    cap = policy.max_tokens_cap
    grant = Grant(
        routes=(lane.key,),
        model=model,
        autoload=options.autoload,
        max_tokens=min(options.max_tokens, cap) if options.max_tokens is not None else cap,
        origin=origin,
        conversation_id=conversation_id,
        # pinned by the host app, else by the operator for the model: the gate puts it first
        system_prompt=system_prompt if system_prompt is not None else policy.system_prompts.get(model),
        streams=policy.streams,
    )
    minted = mint(
        issuer.key,
        issuer=issuer.issuer,
        audience=issuer.audience,
        subject=user,
        scope=scope,
        grant=grant,
        now=now,
        ttl=policy.ttl,
        jti=jti,
    )
    return Granted(
        supported=True,
        route=lane.name,
        url=url,
        token=minted.token,
        expires_at=minted.claims.exp,
        ttl_seconds=minted.claims.exp - minted.claims.iat,
        model=model,
        conversation_id=conversation_id,
        scope=scope,
        grant=grant.to_claim(),
        fallback_url=policy.fallback_for(lane),
    )


def _owned(conversation_id: str, user: str, conversations: Conversations, now: float) -> str:
    """The id, when `user` opened it; an unknown id gets the same refusal, so ids cannot be probed."""
    if conversations.owner(conversation_id, now) != user:
        raise RequestRefusal(CONVERSATION_NOT_OWNED)
    return conversation_id
