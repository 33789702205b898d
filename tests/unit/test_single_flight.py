"""SingleFlight: callers arriving while a run is out join it; one going away does not cancel it."""

from __future__ import annotations

import asyncio

from llama_launcher.gate.single_flight import SingleFlight


def test_callers_during_a_run_share_it_and_a_later_caller_starts_another() -> None:
    async def main() -> None:
        flight: SingleFlight[int] = SingleFlight()
        runs: list[int] = []
        gate = asyncio.Event()

        async def work() -> int:
            runs.append(1)
            await gate.wait()
            return len(runs)

        joined = [asyncio.ensure_future(flight.join(work)) for _ in range(5)]
        await asyncio.sleep(0)
        gate.set()
        assert await asyncio.gather(*joined) == [1] * 5
        assert await flight.join(work) == 2

    asyncio.run(main())


def test_a_caller_that_goes_away_does_not_cancel_the_others_answer() -> None:
    async def main() -> None:
        flight: SingleFlight[str] = SingleFlight()

        async def work() -> str:
            await asyncio.sleep(0.05)
            return "answer"

        leaving = asyncio.ensure_future(flight.join(work))
        staying = asyncio.ensure_future(flight.join(work))
        await asyncio.sleep(0.01)
        leaving.cancel()
        assert await staying == "answer"

    asyncio.run(main())


def test_cancel_stops_a_run_under_way() -> None:
    async def main() -> None:
        flight: SingleFlight[None] = SingleFlight()
        ended: list[str] = []

        async def work() -> None:
            try:
                await asyncio.sleep(10)
            finally:
                ended.append("stopped")

        waiter = asyncio.ensure_future(flight.join(work))
        await asyncio.sleep(0.01)
        await flight.cancel()
        assert ended == ["stopped"]
        waiter.cancel()
        await flight.cancel()  # nothing under way: a no-op

    asyncio.run(main())
