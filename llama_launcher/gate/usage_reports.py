"""What each generating lane request used, told to the broker after its answer ended (`USAGE_PATH`).

The broker reserved the grant's `max_tokens` from its user's budget (`llama_direct.budgets`); only the
gate sees the stream, so only the gate can say what it used. For each request in a generating format,
`begin` makes a `Metered`: the grant's id, user, model, route and lane, and a `UsageTail` the relay
feeds a copy of the answer's last bytes. When the relay ends, `end` reads the usage llama-server
reported there and posts `ended` on the broker's control socket:

- the end was relayed, 2xx: the tokens found (none found: as an end not seen);
- the end was relayed, any other status, or the upstream failed before its head: nothing generated;
- the client left or the upstream was cut mid-answer: the end was not seen, and the broker charges the
  whole reservation.

A stream still running when its grant expires is reported `started` then, so the broker holds its
reservation rather than return it as a grant never used. Reports are tasks of their own: a request
never waits on one, and the answer's last byte has gone to the client before one is sent. When the
broker cannot be reached, the report is dropped and logged (the reservation stays charged: a budget
errs on the side of the user having less, never more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx

from llama_direct.budgets import GENERATING_FORMATS, UsageReport
from llama_direct.control import USAGE_PATH, usage_report
from llama_direct.lanes import LaneRoute
from llama_direct.tokens import Claims
from llama_launcher.gate.usage_tail import Usage, UsageTail

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 5.0
MAX_PENDING = 1024
"""Reports in flight at once; past this the broker is not keeping up, and more would only pile up."""


class Metered:
    """One generating request, from its forwarding to its report."""

    __slots__ = ("jti", "lane", "model", "route", "sub", "tail", "timer")

    def __init__(self, claims: Claims, route: LaneRoute, lane: str, body_format: str) -> None:
        self.jti = claims.jti
        self.sub = claims.sub
        self.model = claims.grant.model
        self.route = route.name
        self.lane = lane
        self.tail = UsageTail(body_format)
        self.timer: asyncio.TimerHandle | None = None

    def report(self, phase: str, usage: Usage | None, *, generated: bool = True) -> UsageReport:
        """`generated` False: nothing reached llama-server's generation (0 tokens); else `usage`, or
        none (the end not seen)."""
        if not generated:
            return UsageReport(self.jti, self.sub, self.model, self.route, self.lane, phase, 0, 0)
        prompt = usage.prompt_tokens if usage is not None else None
        completion = usage.completion_tokens if usage is not None else None
        return UsageReport(self.jti, self.sub, self.model, self.route, self.lane, phase, prompt, completion)


def read_usage(metered: Metered, *, status: int | None, complete: bool, chunked: bool) -> tuple[Usage | None, bool]:
    """(usage, generated) of an ended answer: `status` None when no head came (nothing generated)."""
    if status is None:
        return None, False
    if not complete:
        return None, True
    if not 200 <= status < 300:
        return None, False
    return metered.tail.usage(chunked=chunked), True


class UsageReporter:
    """Posts each generating request's start (when it outlives its grant) and end to the broker."""

    def __init__(self, control_socket: str) -> None:
        self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=control_socket),
                                         base_url="http://broker", timeout=REPORT_TIMEOUT)
        self._pending: set[asyncio.Task[Any]] = set()

    def begin(self, claims: Claims, route: LaneRoute, lane: str) -> Metered | None:
        """A request about to be forwarded: metered when its route generates (a resume re-reads a stream
        its first grant reserved for; a count or an embedding generates nothing)."""
        body_format = route.body
        if body_format is None or body_format not in GENERATING_FORMATS:
            return None
        metered = Metered(claims, route, lane, body_format)
        delay = claims.exp - time.time()
        metered.timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._started, metered)
        return metered

    def end(self, metered: Metered, *, status: int | None, complete: bool, chunked: bool) -> Usage | None:
        """The relay ended: the report goes out as a task; the usage found, for the metrics."""
        if metered.timer is not None:
            metered.timer.cancel()
            metered.timer = None
        usage, generated = read_usage(metered, status=status, complete=complete, chunked=chunked)
        self._send(metered.report("ended", usage, generated=generated))
        return usage

    def _started(self, metered: Metered) -> None:
        metered.timer = None
        self._send(metered.report("started", None))

    def _send(self, report: UsageReport) -> None:
        if len(self._pending) >= MAX_PENDING:
            log.warning("event=usage_report_dropped reason=backlog user=%s", report.sub)
            return
        task = asyncio.ensure_future(self._post(report))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, report: UsageReport) -> None:
        try:
            answer = await self._client.post(USAGE_PATH, json=usage_report(report))
        except httpx.HTTPError:
            log.warning("event=usage_report_failed reason=broker_unreachable user=%s", report.sub)
            return
        if answer.status_code != 204:
            log.warning("event=usage_report_failed status=%d user=%s", answer.status_code, report.sub)

    async def aclose(self) -> None:
        """The gate is stopping: reports already on their way get a moment to arrive, then the client closes."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=REPORT_TIMEOUT)
        for task in list(self._pending):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self._client.aclose()
