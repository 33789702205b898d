"""Which models a user may use, and their state: `GET /v1/models` and the model a negotiation names.

Pure. The gate's health lists each model the router serves with its state (`unloaded`, `loading`,
`loaded`) and whether it reads images, never a path. The models a user may use are the ones the
launcher configured (`settings.models`); an attached router's are the ones it lists; a single
llama-server's is its one model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llama_direct.refusals import UnknownModel

MODEL_STATES = ("unloaded", "loading", "loaded")


@dataclass(frozen=True)
class ModelInfo:
    """One model as the gate's health says: its name, state and whether it reads images."""

    id: str
    status: str
    vision: bool = False

    @classmethod
    def parse_all(cls, value: object) -> tuple[ModelInfo, ...]:
        found: list[ModelInfo] = []
        for item in value if isinstance(value, list) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                status = item.get("status")
                found.append(cls(item["id"], status if status in MODEL_STATES else "unloaded",
                                 item.get("vision") is True))
        return tuple(found)


def allowed_models(configured: Sequence[str], default: str, listed: Sequence[ModelInfo]) -> list[str]:
    """The names a user may use, the default first."""
    names = list(configured) or [model.id for model in listed] or [default]
    if default in names:
        names.remove(default)
        names.insert(0, default)
    return names


def choose_model(asked: str | None, allowed: Sequence[str]) -> str:
    """The model a negotiation grants: the one asked for if the user may use it, else the default."""
    if asked is None:
        return allowed[0]
    if asked not in allowed:
        raise UnknownModel(asked)
    return asked


def model_status(name: str, listed: Sequence[ModelInfo], model_ready: bool) -> ModelInfo:
    for model in listed:
        if model.id == name:
            return model
    return ModelInfo(name, "loaded" if model_ready else "loading")


def listing(allowed: Sequence[str], listed: Sequence[ModelInfo], model_ready: bool) -> dict[str, Any]:
    """`GET /v1/models`: OpenAI's list shape, plus each model's state; only names, never a path."""
    data: list[Mapping[str, Any]] = []
    for name in allowed:
        info = model_status(name, listed, model_ready)
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "llama-direct",
                     "status": info.status, "vision": info.vision})
    return {"object": "list", "data": data}


def needs_load(name: str, listed: Sequence[ModelInfo]) -> bool:
    """Whether a chat for `name` would make the router load it (a model it lists as unloaded).

    Charged at negotiation, so a token that is never used still counts; one already loading does not.
    """
    return any(model.id == name and model.status == "unloaded" for model in listed)
