"""The gate's health as the broker reads it: whether the lane can serve, and which models it has.

Pure. The broker polls the gate's `GET /health` (`broker.gate_link`) and keeps one `GateHealth`;
negotiation, the model list and the baseline read that, never the raw answer, so an answer of an
unexpected shape counts once, here, as a gate that is down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from broker.models import ModelInfo


@dataclass(frozen=True)
class GateHealth:
    """The gate's last `GET /health` answer (`llama_direct.documents.HealthAnswer`), as the app's poller saw it."""

    up: bool
    model_ready: bool = False
    model: str | None = None
    vision: bool = False
    slots: Mapping[str, int] = field(default_factory=dict)
    models: tuple[ModelInfo, ...] = ()
    not_issued_before: int | None = None
    """The gate's start cut-off: it refuses a token whose `iat` is earlier (its replay cache is new)."""

    @classmethod
    def from_answer(cls, answer: object) -> GateHealth:
        """A health body; one of an unexpected shape counts as a gate that is down."""
        if not isinstance(answer, dict) or answer.get("gate") != "ok":
            return GATE_DOWN
        slots = answer.get("slots")
        model = answer.get("model")
        cut_off = answer.get("not_issued_before")
        return cls(
            up=True,
            model_ready=answer.get("model_ready") is True,
            model=model if isinstance(model, str) else None,
            vision=answer.get("vision") is True,
            slots=slots if isinstance(slots, dict) else {},
            models=ModelInfo.parse_all(answer.get("models")),
            not_issued_before=cut_off if isinstance(cut_off, int) and not isinstance(cut_off, bool) else None,
        )

GATE_DOWN = GateHealth(up=False)

GATE_DOWN = GateHealth(up=False)
