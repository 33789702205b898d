"""Which models a user may use, and their state: `GET /v1/models` and the model a negotiation names.

Pure. The gate's health lists each model the router serves with its state (`unloaded`, `loading`,
`loaded`) and whether it reads images, never a path. The models a user may use are the ones the
launcher configured (`settings.models`); an attached router's are the ones it lists; a single
llama-server's is its one model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llama_direct.documents import ListedModel, ModelEntry, ModelList
from llama_direct.model_states import MODEL_STATES, merge_models
from llama_direct.refusals import UnknownModel


@dataclass(frozen=True)
class ModelInfo:
    """One model as the gate's health says: its name, state and whether it reads images."""

    id: str
    status: str
    vision: bool = False
    progress: float | None = None
    """How much of a loading model's load is done (0..1), where the router reported it."""
    tools: bool = False
    """Whether its chat template takes tools, where its gate knows (`ModelEntry.tools`)."""

    @classmethod
    def parse_all(cls, value: object) -> tuple[ModelInfo, ...]:
        found: list[ModelInfo] = []
        for item in value if isinstance(value, list) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                status = item.get("status")
                status = status if status in MODEL_STATES else "unloaded"
                found.append(cls(item["id"], status, item.get("vision") is True,
                                 _fraction(item.get("progress")) if status == "loading" else None,
                                 item.get("tools") is True))
        return tuple(found)


def _fraction(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return None


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


def listing(own: Sequence[ModelInfo]) -> ModelList:
    """`GET /v1/models`: OpenAI's list shape, plus each model's state (and a loading one's `progress`,
    0..1, where the router reports it); only names, never a path."""
    return _list(own)


def own_models(allowed: Sequence[str], listed: Sequence[ModelInfo], model_ready: bool) -> list[ModelInfo]:
    """The models this broker grants, each with its state at its own gate."""
    return [model_status(name, listed, model_ready) for name in allowed]


def fleet_listing(own: Sequence[ModelInfo], published: Sequence[object]) -> ModelList:
    """`GET /v1/models` behind an edge that routes by model: this broker's models first, then the
    ones the fleet's other brokers published (`broker.fleet_models`), each once at its best state
    (merged as the gate merges its upstreams). What Redis held is parsed like a health answer."""
    listings = [own, *(ModelInfo.parse_all(entries) for entries in published)]
    merged = merge_models([_published(model) for model in models] for models in listings)
    return _list(ModelInfo.parse_all(merged))


def published(listed: Sequence[ModelInfo]) -> list[ModelEntry]:
    """What a broker publishes of its models for the others: names and states, never a path."""
    return [_published(model) for model in listed]


def _published(model: ModelInfo) -> ModelEntry:
    entry: ModelEntry = {"id": model.id, "status": model.status, "vision": model.vision}
    if model.progress is not None:
        entry["progress"] = model.progress
    if model.tools:
        entry["tools"] = True
    return entry


def _list(models: Iterable[ModelInfo]) -> ModelList:
    return ModelList(object="list", data=[_listed(model) for model in models])


def _listed(model: ModelInfo) -> ListedModel:
    listed = ListedModel(object="model", created=0, owned_by="llama-direct", id=model.id, status=model.status,
                         vision=model.vision)
    if model.progress is not None:
        listed["progress"] = model.progress
    if model.tools:
        listed["tools"] = True
    return listed
