"""What each generating lane request used, told to the broker after its answer ended (`USAGE_PATH`).

The broker reserved the grant's `max_tokens` from its user's budget (`llama_direct.budgets`); only the
gate sees the stream, so only the gate can say what it used. For each request in a generating format,
`begin` makes a `Metered` once its grant is spent: the grant's id, user, model, route and lane, and a
`UsageTail` the relay feeds a copy of the answer's last bytes. When the relay ends, `end` reads the
usage llama-server reported there and posts `ended` on the broker's control socket:

- the end was relayed, 2xx: the tokens found (none found: as an end not seen);
- the end was relayed, any other status, the upstream failed before its head, or the gate refused the
  request after spending its grant: nothing generated;
- the client left or the upstream was cut mid-answer: the end was not seen, and the broker charges the
  whole reservation.

A stream still running when its grant expires is reported `started` then, so the broker holds its
reservation rather than return it as a grant never used.

A resumable stream (one that opened a conversation) whose client left is not given up at once: it runs
on in llama-server, and a resume within the gate's resume window reads its end. So its report waits
(it is reported `started` at once, so its reservation is held meanwhile): the first resume whose end
is seen settles the original grant with the usage in that end; with no such resume within the window
(and a margin), it is reported as an end not seen. Reports are tasks of their own: a request
never waits on one, and the answer's last byte has gone to the client before one is sent. The reports of
a moment (`COALESCE_SECONDS`) go in one body (`llama_direct.control.usage_batches`), and what is queued is
sent at once when the gate stops. When the broker cannot be reached, the body's reports are dropped and
logged (their reservations stay charged: a budget errs on the side of the user having less, never more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from llama_direct.budgets import GENERATING_FORMATS, UsageReport
from llama_direct.control import USAGE_PATH, usage_batches
from llama_direct.lanes import LaneRoute
from llama_direct.refusals import Refusal
from llama_direct.tokens import Claims
from llama_launcher.gate.scope import Route
from llama_launcher.gate.upstream import send_request
from llama_launcher.gate.usage_tail import Usage, UsageTail

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 5.0
RESUME_MARGIN = 5.0
"""After the resume window, how long a resume that just began may take to be seen here."""
MAX_QUEUED = 4096
"""Reports waiting at once; past this the broker is not keeping up, and more would only pile up."""
COALESCE_SECONDS = 0.5
"""How long the first report after a quiet spell waits for others to share its body. Each body costs the
gate and the broker CPU of its own (an HTTP exchange; the broker's request cycle and thread hop): one a
stream doubled the gate's CPU per request. A report a moment later only holds a reservation a moment
longer, so a budget errs on the side of less, as it does when a report is lost."""


class Metered:
    """One generating request (or a resume that may settle one), from its forwarding to its report."""

    __slots__ = ("conversation", "jti", "lane", "model", "route", "sub", "tail", "timer")

    def __init__(self, jti: str, sub: str, model: str, route: str, lane: str, body_format: str,
                 conversation: str | None) -> None:
        self.jti = jti
        self.sub = sub
        self.model = model
        self.route = route
        self.lane = lane
        self.tail = UsageTail(body_format)
        self.conversation = conversation
        """The conversation a resume may read this stream's end in; None: not resumable."""
        self.timer: asyncio.TimerHandle | None = None

    def resumed(self) -> Metered:
        """The same grant, read afresh by a resume (a new tail: the resume's own bytes)."""
        return Metered(self.jti, self.sub, self.model, self.route, self.lane, self.tail.body_format, self.conversation)

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


class ControlSocket:
    """The broker's control socket as the gate's `upstream.Upstream`: no key (the socket's mode is its
    guard), no TLS. Reports go through the gate's own one-shot exchange, not an httpx client: a third of
    the CPU a body."""

    ssl = None
    host_header = b"broker"

    def __init__(self, path: str) -> None:
        self.address = path

    def authorization(self) -> bytes:
        return b""

    def is_ready(self) -> bool:
        return True


class UsageReporter:
    """Posts each generating request's start (when it outlives its grant) and end to the broker."""

    def __init__(self, control_socket: str, resume_window: float, coalesce: float = COALESCE_SECONDS) -> None:
        self._broker = ControlSocket(control_socket)
        self._queued: list[UsageReport] = []
        self._flusher: asyncio.Future[None] | None = None
        self._stopping = asyncio.Event()
        self._coalesce = coalesce
        self._failing = False
        self._wait = resume_window + RESUME_MARGIN
        self._parked: dict[str, Metered] = {}
        """Resumable streams whose client left, by conversation: a resume's end may settle them."""

    def begin(self, claims: Claims, entry: LaneRoute | None, lane: str) -> Metered | None:
        """A request whose grant was just spent: metered when its lane route (`scope.metered_lane`)
        generates (a count or an embedding generates nothing). Metered from the spend, not from the
        forwarding: a refusal after it ends it as nothing generated, so the broker frees its
        reservation and stream slot at once (the grant can never be used again); a refusal before the
        spend has no `Metered`, and its grant keeps its slot, since it may still be used."""
        if entry is None or entry.body is None or entry.body not in GENERATING_FORMATS:
            return None
        conversation = claims.grant.conversation_id if entry.conversation == "opens" else None
        metered = Metered(claims.jti, claims.sub, claims.grant.model, entry.name, lane, entry.body, conversation)
        delay = claims.exp - time.time()
        metered.timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._started, metered)
        return metered

    def resume(self, claims: Claims, route: Route) -> Metered | None:
        """A resume about to be forwarded: the stream it resumes, when its end is still to be seen. Taken
        only once the resume is forwarded: a refused resume leaves that stream parked."""
        if route.lane.conversation != "resumes":
            return None
        parked = self._parked.get(route.conversation_id or "")
        if parked is None or parked.sub != claims.sub:
            return None
        del self._parked[route.conversation_id or ""]
        _cancel(parked)
        return parked.resumed()

    def end(self, metered: Metered, *, status: int | None, complete: bool, chunked: bool) -> Usage | None:
        """The relay ended: the report goes out as a task; the usage found, for the metrics."""
        started = metered.timer is None  # its grant expired while it ran: reported started already
        _cancel(metered)
        usage, generated = read_usage(metered, status=status, complete=complete, chunked=chunked)
        if generated and usage is None and not complete and metered.conversation is not None:
            self._park(metered, started=started)
            return None
        self._send(metered.report("ended", usage, generated=generated))
        return usage

    def _started(self, metered: Metered) -> None:
        metered.timer = None
        self._send(metered.report("started", None))

    def _park(self, metered: Metered, *, started: bool) -> None:
        """Its client left a resumable stream: held (reported started) until a resume's end settles it,
        or `_unresumed` gives up on it."""
        conversation = metered.conversation
        assert conversation is not None
        replaced = self._parked.pop(conversation, None)
        if replaced is not None:  # two relays of one conversation both left: the older one is given up
            _cancel(replaced)
            self._send(replaced.report("ended", None))
        if not started:
            self._send(metered.report("started", None))
        metered.timer = asyncio.get_running_loop().call_later(self._wait, self._unresumed, metered)
        self._parked[conversation] = metered

    def _unresumed(self, metered: Metered) -> None:
        metered.timer = None
        if metered.conversation is not None and self._parked.get(metered.conversation) is metered:
            del self._parked[metered.conversation]
            self._send(metered.report("ended", None))

    def _send(self, report: UsageReport) -> None:
        """Queued for the next body: the first report after a quiet spell waits `COALESCE_SECONDS` for
        the ends that follow it, so that a busy gate sends one body for many streams."""
        if len(self._queued) >= MAX_QUEUED:
            log.warning("event=usage_report_dropped reason=backlog user=%s", report.sub)
            return
        self._queued.append(report)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        """Sends what is queued, one body after another, until nothing is; waits first unless stopping."""
        try:
            if not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._coalesce)
            while self._queued:
                reports, self._queued = self._queued, []
                for body in usage_batches(reports):
                    await self._post(body)
        finally:
            self._flusher = None

    async def _post(self, body: bytes) -> None:
        try:
            status = await send_request(self._broker, "POST", USAGE_PATH, timeout=REPORT_TIMEOUT, body=body)
        except Refusal:
            status = 0
        if status == 204:
            if self._failing:
                self._failing = False
                log.info("event=usage_reports_back")
            return
        # One WARNING an outage, not one a body: each lost report leaves its reservation charged.
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "event=usage_report_failed status=%d: the reservations it settled stay charged", status)

    async def aclose(self) -> None:
        """The gate is stopping: streams still waiting for a resume are given up, and what is queued is
        sent at once, with `REPORT_TIMEOUT` to arrive."""
        for metered in self._parked.values():
            _cancel(metered)
            self._send(metered.report("ended", None))
        self._parked.clear()
        self._stopping.set()
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(flusher), REPORT_TIMEOUT)
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher


def _cancel(metered: Metered) -> None:
    if metered.timer is not None:
        metered.timer.cancel()
        metered.timer = None
