"""Named users at the broker: whose secret or session this is, and what their limits let negotiation grant.

The owner (the access token, `OWNER`) is not in the store and has no limits: a one-person setup
reads nothing here. A user's login token and API key are looked up by digest in the store
(`llama_direct.user_store`) at every request that presents one, a user named by a trusted proxy's
header (`header_user`) by name, and a user's session names the
user's generation (`llama_direct.users.session_subject`), checked against the store at every
request: `users remove` or `rotate`, in this process or another, refuses them at the next request.
What the gate already holds (grants) is refused through the revocations: the store's are applied
at start and when `llama-direct users` says so (`apply_store_revocations`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from starlette.datastructures import Headers

from broker.policy import Policy
from llama_direct.documents import ModelList, WhoAmI
from llama_direct.header_users import FORWARDED_USER_HEADER, HeaderUsers, check_room, name_from_header
from llama_direct.refusals import UnknownModel
from llama_direct.tokens import OWNER
from llama_direct.user_store import UserStore
from llama_direct.users import (
    LOGIN,
    Limits,
    User,
    UserExists,
    looks_like_user_secret,
    new_user,
    parse_session_subject,
    secret_digest,
    secret_kind,
)

logger = logging.getLogger(__name__)


def user_for_secret(store: UserStore, presented: str, *, login: bool) -> User | None:
    """The user whose secret this is; with `login`, only a login token (an API key logs no browser in).
    A value without a user secret's prefix costs no lookup; the record must agree with the prefix."""
    if not looks_like_user_secret(presented):
        return None
    kind = secret_kind(presented)
    if login and kind != LOGIN:
        return None
    found = store.credential(secret_digest(presented))
    return found.user if found is not None and found.kind == kind else None


def session_user(store: UserStore, subject: str) -> User | None:
    """The user a session was made for, while that user exists at that generation; None for anything else
    (the owner's sessions are `OWNER` and never reach here)."""
    parsed = parse_session_subject(subject)
    if parsed is None:
        return None
    user = store.user_by_id(parsed[0])
    return user if user is not None and user.generation == parsed[1] else None


def header_user(store: UserStore, headers: Headers, config: HeaderUsers | None, now: float) -> User | None:
    """The user a trusted proxy names (`llama_direct.header_users`): None without the gate's forwarded
    header, or when serve enabled no header users (then the header is never read). Found by name, or
    made on first sight with the default limits and no secrets (the proxy is their login) while fewer
    than `max_users` were made that way; a name nobody could have is refused."""
    if config is None:
        return None
    values = headers.getlist(FORWARDED_USER_HEADER)
    if not values:
        return None
    name = name_from_header(values)
    found = store.user(name)
    if found is not None:
        return found
    user = new_user(name, config.default_limits, now)
    try:  # counted and added in one transaction: brokers sharing a store never make one past the bound
        store.add(user, (), admit=lambda made: check_room(made, config))
    except UserExists:  # another broker made it first
        made = store.user(name)
        if made is None:
            raise
        return made
    logger.info("event=header_user_added user=%s", user.id)
    return user


def allowed_for(limits: Limits | None, allowed: Sequence[str]) -> tuple[str, ...]:
    """The models a caller may be granted: the server's (`allowed`, the default first) within the
    user's own list. A user none of whose models is served is refused as for an unknown model."""
    if limits is None or limits.models is None:
        return tuple(allowed)
    mine = tuple(model for model in allowed if model in limits.models)
    if not mine:
        raise UnknownModel(None)
    return mine


def policy_for(policy: Policy, limits: Limits | None) -> Policy:
    """The server's policy with its cap held to the user's `max_tokens`, and the user's `streams`
    limit for the grant to carry."""
    if limits is None:
        return policy
    if limits.max_tokens is not None and limits.max_tokens < policy.max_tokens_cap:
        policy = dataclasses.replace(policy, max_tokens_cap=limits.max_tokens)
    if limits.streams is not None:
        policy = dataclasses.replace(policy, streams=limits.streams)
    return policy


def store_revocations(store: UserStore, now: float) -> dict[str, int]:
    """What the store asks the broker to revoke (removals, rotations), for `BrokerCore` to apply."""
    found = store.revocations(now)
    if found:
        logger.info("event=user_revocations count=%d", len(found))
    return found


def listed_for(limits: Limits | None, answer: ModelList) -> ModelList:
    """`GET /v1/models` as a named user sees it: only the models they may use."""
    if limits is None or limits.models is None:
        return answer
    return ModelList(object=answer["object"],
                     data=[model for model in answer["data"] if limits.allows_model(model["id"])])


def who_am_i(sub: str, name: str | None) -> WhoAmI:
    return WhoAmI(sub=sub, name=name, owner=sub == OWNER)
