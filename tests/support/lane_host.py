"""A host app's side of a lane, for the lane tests: mount the broker on a lane, negotiate, stream.

Run as a script (`python lane_host.py DATA_DIR BINARY MODEL`), it is one worker of a host app: it
joins or starts the lane on the data dir, streams one reply, prints what it saw as one JSON line, and
holds the lane until its stdin closes; then it lets go and prints a last line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from broker.core import BrokerCore
from broker.mount import direct_router, mounted_core
from llama_launcher.lane import Lane, start_lane

ORIGIN = "http://app.test:9000"
"""The host app's origin: the lane answers its pages only."""


def negotiate(core: BrokerCore, lane: Lane, user: str = "alice", count: int = 1, *, route: str = "chat",
              system_prompt: str | None = None) -> list[dict[str, Any]]:
    """`count` grants for `user` and `route` from a broker mounted on `lane` with `core`, as the host's page
    asks; the host pins `system_prompt` into each when given."""
    app = FastAPI()
    app.include_router(direct_router(core, who=lambda _request: user, lane_url=lane.url,
                                     system_prompt=lambda _request: system_prompt))
    with TestClient(app, base_url=ORIGIN) as client:
        grants = [client.post("/direct-stream", json={"route": route}, headers={"Origin": ORIGIN}).json()
                  for _ in range(count)]
    assert all(grant["supported"] is True for grant in grants), grants
    return grants


def stream(grant: dict[str, Any]) -> dict[str, Any]:
    """One short streamed reply through the lane with `grant`; a refusal's status and reason instead."""
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "stream": True}
    headers = {"Authorization": f"Bearer {grant['token']}", "Origin": ORIGIN}
    events = []
    with httpx.stream("POST", grant["url"] + "/v1/chat/completions", json=body, headers=headers,
                      timeout=120) as response:
        if response.status_code != 200:
            response.read()
            return {"status": response.status_code, "reason": response.json()["error"]["reason"]}
        allow_origin = response.headers.get("access-control-allow-origin")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    return {"status": 200, "events": len(events), "done": events[-1:] == ["[DONE]"], "allow_origin": allow_origin,
            "url": grant["url"]}


def stream_once(lane: Lane, user: str = "alice") -> dict[str, Any]:
    """A grant from a broker mounted on `lane`, then one short streamed reply through the lane."""
    seen = stream(negotiate(mounted_core(lane.broker_settings), lane, user)[0])
    assert seen["status"] == 200, seen
    return seen


def main() -> None:
    data_dir, binary, model = sys.argv[1:4]
    lane = start_lane(Path(data_dir), allowed_origins=[ORIGIN], llama_server=Path(binary), model=Path(model))
    report = {"pid": os.getpid(), "lane_pid": lane.pid, "url": lane.url, "started": lane.started,
              **stream_once(lane)}
    print(json.dumps(report), flush=True)
    sys.stdin.read()
    lane.stop()
    print(json.dumps({"stopped": True}), flush=True)


if __name__ == "__main__":
    main()
