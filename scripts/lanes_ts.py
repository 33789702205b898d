"""Write `frontend/src/lanes.ts` from the lane registry, so the TypeScript clients read the same list.

    .venv/bin/python scripts/lanes_ts.py

Run it after changing `llama_direct/lanes.py` (`tests/unit/test_lanes_ts.py` fails until you do);
the file it writes is committed, so the frontend's build needs no Python.
"""

from __future__ import annotations

import json
from pathlib import Path

from llama_direct.lanes import LANE_ROUTES, UNUSED_GRANT_HEADER

TARGET = Path(__file__).resolve().parent.parent / "frontend" / "src" / "lanes.ts"


def render() -> str:
    """The module's text: one entry per route, keyed by its name."""
    entries = []
    for route in LANE_ROUTES:
        fields = {"method": route.method, "path": route.path, "scope": route.scope, "body": route.body,
                  "conversation": route.conversation, "lengthCap": route.length_cap, "query": list(route.query)}
        entries.append(f"  {route.name}: {json.dumps(fields, separators=(', ', ': '))},")
    return "\n".join([
        "// Generated from llama_direct/lanes.py by scripts/lanes_ts.py; do not edit by hand.",
        "// tests/unit/test_lanes_ts.py fails when this file and the registry differ.",
        "",
        "/** Every lane route: method, path under the lane, scope, body format, conversation use, length cap. */",
        "export const LANE_ROUTES = {",
        *entries,
        "} as const;",
        "",
        "export type LaneRouteName = keyof typeof LANE_ROUTES;",
        "",
        "/** On a baseline request: the token of the lane grant the client could not use, whose reservation the",
        " * baseline then serves under instead of reserving another. */",
        f"export const UNUSED_GRANT_HEADER = {json.dumps(UNUSED_GRANT_HEADER)};",
        "",
    ])


if __name__ == "__main__":
    TARGET.write_text(render())
