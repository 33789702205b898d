"""The gate's `/health` as the broker's tests fake it: a whole `HealthAnswer`, as the gate writes it.

The broker reads the answer through the contract's parser (`llama_direct.documents.parse_health`),
which refuses a partial one; each fake starts from `ready_health` and changes what its test is about.
"""

from __future__ import annotations

from typing import Any

from llama_direct.documents import HealthAnswer


def ready_health(model: str = "smol", **changes: Any) -> HealthAnswer:
    """A single llama-server's gate, ready, with `model` loaded; `changes` replace fields."""
    answer: HealthAnswer = {
        "gate": "ok", "model_ready": True, "model": model, "vision": False, "slots": {"total": 1, "busy": 0},
        "router": False, "models": [{"id": model, "status": "loaded", "vision": False}],
    }
    return {**answer, **changes}  # type: ignore[typeddict-item]
