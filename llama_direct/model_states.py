"""A model's state as the gate's health and `GET /v1/models` say it, and how several sources merge.

Pure. One upstream lists each model as `unloaded`, `loading` or `loaded`, with whether it reads
images (and a loading one's `progress`). Where several serve the same model (upstreams behind one
gate, or the gates of a fleet behind one HAProxy), the model is listed once, at its best state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MODEL_STATES = ("unloaded", "loading", "loaded")
STATE_RANK = {state: rank for rank, state in enumerate(MODEL_STATES)}


def merge_models(listings: Iterable[Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Each model once, in order of first mention: its best state (with that state's `progress`), and
    vision and tools if any source says so."""
    models: dict[str, dict[str, Any]] = {}
    for listing in listings:
        for entry in listing:
            known = models.get(entry["id"])
            if known is None:
                models[entry["id"]] = dict(entry)
                continue
            if STATE_RANK.get(entry["status"], 0) > STATE_RANK.get(known["status"], 0):
                known["status"] = entry["status"]
                known.pop("progress", None)
                if entry.get("progress") is not None:
                    known["progress"] = entry["progress"]
            known["vision"] = known.get("vision") or entry.get("vision")
            if entry.get("tools") is True:
                known["tools"] = True
    return list(models.values())
