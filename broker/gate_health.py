"""The gate's health as the broker reads it: whether the lane can serve, and which models it has.

Pure. The broker polls the gate's `GET /health` (`broker.gate_link`) and keeps one `GateHealth`;
negotiation, the model list and the baseline read that, never the raw answer. The body is read by
the contract's parser (`llama_direct.documents.parse_health`): an answer of another shape is a
state of its own, `malformed`, saying which field was wrong (the poller logs it), and the lane
counts it as a gate that is down.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.models import ModelInfo
from llama_direct.documents import HealthAnswer, parse_health
from llama_direct.typed_json import MalformedDocument


@dataclass(frozen=True)
class GateHealth:
    """The gate's last `GET /health` answer (`llama_direct.documents.HealthAnswer`), as the app's poller saw it."""

    up: bool
    model_ready: bool = False
    models: tuple[ModelInfo, ...] = ()
    not_issued_before: int | None = None
    """The gate's start cut-off: it refuses a token whose `iat` is earlier (its replay cache is new)."""
    router: bool = False
    """Whether the gate's upstream is a llama-server router, whose models load and unload."""
    malformed: str | None = None
    """Why the gate's last answer could not be read (the field that was wrong); None when it could."""

    @classmethod
    def from_answer(cls, answer: HealthAnswer) -> GateHealth:
        """A health answer the contract's parser has read."""
        return cls(
            up=True,
            model_ready=answer["model_ready"],
            models=ModelInfo.parse_all(answer["models"]),
            not_issued_before=answer.get("not_issued_before"),
            router=answer["router"],
        )

    @classmethod
    def read(cls, body: bytes) -> GateHealth:
        """A 200 answer's body: the health it says, or a down gate that says why it was not read."""
        try:
            return cls.from_answer(parse_health(body))
        except MalformedDocument as error:
            return cls(up=False, malformed=str(error))


GATE_DOWN = GateHealth(up=False)
