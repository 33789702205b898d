"""One in-process gate run per test (`run`) and one request on a fresh connection (`ask`), for the gate's
I/O shell tests (test_proxy*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gate_fakes import (
    Client,
    Harness,
    running_gate,
)

CHAT = b'{"messages":[{"role":"user","content":"hi"}],"stream":true}'


def run(scenario: Callable[[Harness], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        async with running_gate(**settings) as harness:
            await scenario(harness)

    asyncio.run(asyncio.wait_for(main(), 20))


async def ask(harness: Harness, raw: bytes, *, where: int | str | None = None) -> Any:
    client = await Client.open(where if where is not None else harness.port)  # type: ignore[arg-type]
    try:
        await client.send(raw)
        return await client.response()
    finally:
        client.close()
