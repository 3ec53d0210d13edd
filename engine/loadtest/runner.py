"""One worker's load: drives an `Engine` in a closed or open loop and records every request.

Order of a run: the pre-flight (the first request alone, until its response headers: a wrong
key, path or host ends the run there, `JobFailed`, before the load floods the server), then
prime the pool (one concurrent short request per connection the load will need, so connect
time never lands in a measured TTFT), wait for the common start instant,
run warm-up plus the measured window, then give the requests still in flight `grace_s` to
end (each is also bound by its own time limits) and record those that did not as failed
"Unfinished": every request sent is reported, never silently dropped. Every latency runs
from the request's *intended* start: in an open loop that is its slot in the schedule, so a
send delayed by a busy client or a full pool still counts its whole wait (no coordinated
omission), and the delay itself is reported as schedule lag. A signal (`Stop`) or a
job-level failure met by every request for a while (`FailureWatch`) ends the load early the
same way its end does, and the result says why (`engine.loadtest.interrupts`).

A closed-loop user whose request was refused with Retry-After (or retry-after-ms) waits as
asked, at most RETRY_AFTER_CAP_S and never past the window's end, before its next request:
without the wait a 429 answered in microseconds turns the loop into a flood. An open loop
keeps its schedule; the report says how often the server asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

from engine.client import Engine, RetryPolicy, StreamResult
from engine.config import env_api_key
from engine.errors import EngineError
from engine.loadtest.config import LoadConfig, split_evenly
from engine.loadtest.garbage import bound_garbage, drop_frames
from engine.loadtest.interrupts import (
    FailureWatch,
    Halt,
    Stop,
    redacted_job_failure,
    unless_stopped,
)
from engine.loadtest.metrics import RequestRecord, error_kind, record_failure, record_result
from engine.loadtest.selfcheck import ClientCheck, SelfCheckMonitor
from engine.loadtest.shapes import Arrival, open_schedule
from engine.loadtest.workload import Planned, Session, Workload
from engine.preflight import wait_open
from engine.redaction import secret_values, url_credentials

PROGRESS_EVERY_S = 0.5
# A worker's phases in order; a snapshot says which one it is in (`Runner.snapshot`).
PHASES = ("priming", "warm-up", "measuring", "draining", "done")
# Per stream in flight: one event (a 4 MiB `response.completed` holds about a million
# characters of output) and what `run` keeps of one answer (about a million tokens).
BENCH_MAX_EVENT_BYTES = 4 * 1024 * 1024
BENCH_MAX_RESPONSE_CHARS = 4 * 1024 * 1024
PRIME_HEADROOM = 1.5  # open loop: connections for 1.5x the expected requests in flight
SPIN_CAP_NS = 10_000_000  # the adaptive spin never exceeds 10 ms per send
LATE_DECAY = 0.99  # per sleep: one slow wake-up is forgotten after a few hundred sends
# The longest wait a Retry-After can impose on a closed-loop user (the engine's own cap).
RETRY_AFTER_CAP_S = RetryPolicy().max_retry_after_s
# Priming only opens connections: a primer (or the open loop's probe) that has not ended by
# then is cut off and counted as a primer error, so a server that never answers cannot hold
# the run back for its full time limits before the load even starts.
PRIME_LIMIT_S = 10.0
Progress = Callable[[dict[str, Any]], None]


class Cancelled(EngineError):
    """A request the workload cancels on purpose (`--cancel-rate`): counted on its own."""


class Unfinished(EngineError):
    """A request still in flight when the run (or the priming) had to end: counted as failed
    with this kind, never dropped."""


@dataclass(slots=True)
class WorkerResult:
    """What one worker hands back: plain, picklable data."""

    worker: int
    records: list[RequestRecord]
    check: ClientCheck
    connect_ms: list[float] = field(default_factory=list)  # each new connection's setup time
    connections_opened_measured: int = 0  # new connections inside the window (ideally 0)
    primed: int = 0
    prime_errors: dict[str, int] = field(default_factory=dict)
    origin_ns: int = 0  # perf_counter_ns of the measured window's start (records' offset 0)
    halt: Halt | None = None  # why the load ended early (a signal, a job failure), if it did


class Runner:
    """`async with Runner(config, worker, workers) as r: await r.prime(); await r.run(t0)`."""

    def __init__(
        self,
        config: LoadConfig,
        worker: int = 0,
        workers: int = 1,
        progress: Progress | None = None,
        canary_url: str | None = None,
        stop: Stop | None = None,
    ) -> None:
        self.config = config
        self.stop = stop or Stop()
        self.canary_url = canary_url if config.canary else None
        self.worker = worker
        self.workers = workers
        self.workload = Workload(config)
        self.progress = progress
        # Resolved here (as Engine would) so the key sent is the key redacted from messages.
        api_key = config.api_key if config.api_key is not None else env_api_key()
        self.secrets = secret_values(
            api_key, config.headers, extra=url_credentials(config.network.proxy)
        )
        self.engine = Engine(
            config.base_url,
            api_key=api_key,
            max_connections=config.pool_size,
            timeouts=config.timeouts,
            retry=RetryPolicy(max_retries=config.retries),
            headers=config.headers,
            # Tighter than the library's caps, because a bench holds a stream's buffers for
            # every stream in flight: memory stays bounded by streams x these (see docs).
            max_event_bytes=BENCH_MAX_EVENT_BYTES,
            max_response_chars=BENCH_MAX_RESPONSE_CHARS,
            **config.network.engine_options(),
        )
        # Each new pool connection's setup time, and when it was in hand (perf_counter_ns):
        # from the results' own stamps (`StreamResult.connect_ns`, `sent_ns`).
        self.connect_ms: list[float] = []
        self.opened_ns: list[int] = []
        body = self.workload.primer(0)
        self.url = self.engine.url_for(body, config.endpoint)[0]
        self.watch = FailureWatch(self.url, self.secrets)
        self.records: list[RequestRecord] = []
        self.inflight = 0
        self.ended = Counter[str]()  # "done", "failed" (measured), "warm-up": for progress
        self.phase = "priming"  # then "running" (its phase read off the clock), then "done"
        self.priming = 0  # connections the priming opens, and how many primers ended so far
        self.primers_done = 0
        self.recent_ttft: deque[float] = deque(maxlen=500)
        self.window_ns = 0  # perf_counter_ns of the measured window's start
        self.spin_ns = int(config.spin_ms * 1e6)
        self.timer_late_ns = 0.0  # decaying max of how late sleeps wake (the adaptive spin)
        self.check = ClientCheck(worker)
        self.primed = 0
        self.prime_errors: Counter[str] = Counter()
        self.stop_ns = 0  # when the load sent its last request (0: not yet)
        self.no_more = asyncio.Event()  # set at stop_ns: wakes users waiting on Retry-After
        self.rearm = asyncio.Event()  # stop_ns moved or a cut-off was asked: the drain looks again
        self.cut_off = False  # past the grace: requests still in flight are being ended
        self.cut_now = False  # a second signal: end the requests in flight without their grace
        self.halt: Halt | None = None  # why the load ended early
        self._sending: asyncio.Task[None] | None = None  # the open loop's schedule

    async def __aenter__(self) -> Self:
        await self.engine.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.aclose()

    # --- warm-up -------------------------------------------------------------------------

    async def prime(self) -> None:
        """The pre-flight, then open the connections the load will need, with concurrent
        short requests. Raises `JobFailed` when the first request shows the job cannot work,
        `Interrupted` on a stop."""
        ticker = asyncio.get_running_loop().create_task(self._report_progress())
        try:
            await unless_stopped(self.stop, self._prime())
        finally:
            ticker.cancel()
        self._report()  # every connection is open: the display says so before the load

    async def _prime(self) -> None:
        config = self.config
        if config.open_loop:
            assert config.rate is not None  # noqa: S101 - open_loop says so
            # The probe is the pre-flight: it goes alone, and its whole answer is needed.
            probe = await (await self._preflight(self.workload.body(-1 - self.worker)))
            e2e_s = 1.0
            if isinstance(probe, StreamResult):
                self._opened(probe)
                e2e_s = probe.e2e_s
            wanted = math.ceil(config.rate / self.workers * e2e_s * PRIME_HEADROOM) + 1
            wanted = self.priming = min(wanted, config.pool_size)
            calls: list[Awaitable[StreamResult | BaseException]] = [
                self._call(self.workload.primer(i)) for i in range(wanted)
            ]
        else:
            wanted = self.priming = min(
                split_evenly(config.concurrency, self.workers, self.worker), config.pool_size
            )
            first = await self._preflight(self.workload.primer(0))  # the first primer
            calls = [first, *(self._call(self.workload.primer(i)) for i in range(1, wanted))]
        results = await asyncio.gather(*map(self._counted, calls))
        for res in results:
            if isinstance(res, BaseException):
                self.prime_errors[error_kind(res)] += 1
            else:
                self._opened(res)
        self.primed = wanted

    async def _counted(
        self, call: Awaitable[StreamResult | BaseException]
    ) -> StreamResult | BaseException:
        """A primer, counted when it ends (the display's connections opened so far)."""
        try:
            return await call
        finally:
            self.primers_done += 1

    def _opened(self, result: StreamResult) -> None:
        """Note the new connection `result` was sent on, if it was not a reused one."""
        if result.connect_ns:
            self.connect_ms.append(result.connect_ns / 1e6)
            self.opened_ns.append(result.sent_ns)

    async def _preflight(self, body: dict[str, Any]) -> asyncio.Task[StreamResult | BaseException]:
        """Send the load's first request alone and wait for its response headers; returns
        it, still streaming. A job-level failure on it raises `JobFailed` at once (never
        after the retries: every one would meet it too)."""
        opened = asyncio.Event()
        first = asyncio.ensure_future(
            self._call(body, on_open=opened.set, before_retry=self._fail_job)
        )
        try:
            await wait_open(first, opened)
        except BaseException:
            first.cancel()
            raise
        if first.done():
            failed = redacted_job_failure(first.result(), self.url, self.secrets)
            if failed is not None:
                raise failed
        return first

    async def _fail_job(self, exc: EngineError, _attempts: int) -> None:
        """Before a retry of the pre-flight: a job-level failure ends the job instead."""
        failed = redacted_job_failure(exc, self.url, self.secrets)
        if failed is not None:
            raise failed

    async def _call(self, body: dict[str, Any], **hooks: Any) -> StreamResult | BaseException:
        """A priming request, at most PRIME_LIMIT_S long; a failure is returned, not raised."""
        try:
            async with asyncio.timeout(PRIME_LIMIT_S):
                return await self.engine.run(body, endpoint=self.config.endpoint, **hooks)
        except EngineError as exc:  # first: the engine's own timeouts are TimeoutErrors too
            return exc
        except TimeoutError:
            return Unfinished(f"a primer still in flight after {PRIME_LIMIT_S:g} s: cut off")
        except Exception as exc:
            return exc

    # --- the run -------------------------------------------------------------------------

    async def run(self, start_ns: int) -> WorkerResult:
        """Run from `start_ns` (perf_counter_ns shared by all workers) to the end."""
        config = self.config
        self.window_ns = start_ns + int(config.warmup_s * 1e9)
        # No automatic cyclic garbage collection while the run measures: a collection's pause
        # is a late send and a late first-token stamp, and with streams that live for seconds
        # CPython's young generation grows to ~20,000 objects between collections (25-45 ms
        # pauses measured at 500 streams). Healthy streams make little cyclic garbage (~140
        # objects/s at 500 streams x 50 tokens/s, measured); reference counting frees the rest
        # as it goes, failures are bounded by garbage.GC_YOUNG_BUDGET, and the collector is back on
        # (with the heap unfrozen) as soon as the run ends.
        enabled = gc.isenabled()
        gc.freeze()
        gc.disable()
        try:
            with self.stop.listening(self._stopped):
                return await self._run(start_ns)
        finally:
            gc.unfreeze()
            if enabled:
                gc.enable()

    def _stopped(self, halt: Halt, times: int) -> None:
        """The stop's hook: the first ends the load, the next ends its requests too."""
        self._halt(halt)
        if times > 1:
            self.cut_now = True
            self.rearm.set()

    def _halt(self, halt: Halt) -> None:
        """End the load now, as its end would: no more sends, the grace starts."""
        self.halt = self.halt or halt
        self._stop_sending(time.perf_counter_ns())
        if self._sending is not None:
            self._sending.cancel()

    async def _run(self, start_ns: int) -> WorkerResult:
        config = self.config
        delay = (start_ns - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        monitor = SelfCheckMonitor(self.worker, canary_url=self.canary_url)
        self.check = monitor.check
        self.phase = "running"
        loop = asyncio.get_running_loop()
        tickers = [
            loop.create_task(self._report_progress()),
            loop.create_task(bound_garbage()),
        ]
        try:
            async with monitor:
                if config.open_loop:
                    await self._open_loop(start_ns)
                else:
                    await self._closed_loop(start_ns)
        finally:
            for ticker in tickers:
                ticker.cancel()
        self.phase = "done"
        self._report()  # the final counts: a display never ends on a stale tick
        opened = sum(1 for t in self.opened_ns if t >= self.window_ns)
        return WorkerResult(
            self.worker,
            self.records,
            self.check,
            self.connect_ms,
            opened,
            self.primed,
            dict(self.prime_errors),
            self.window_ns,
            self.halt,
        )

    async def _closed_loop(self, start_ns: int) -> None:
        config = self.config
        users = split_evenly(config.concurrency, self.workers, self.worker)
        quota = (
            None
            if config.requests is None
            else split_evenly(config.requests, self.workers, self.worker)
        )
        end_ns = (
            None if config.duration_s is None else self.window_ns + int(config.duration_s * 1e9)
        )
        issued = 0
        counter = iter(range(self.worker, 1 << 62, self.workers))  # this worker's sessions
        # Users start spread over the warm-up: started together, equal streams would stay
        # in lockstep and every wave would queue hundreds of sends behind each other.
        ramp_ns = int(config.warmup_s * 1e9) // config.concurrency

        if end_ns is not None:  # sending stops at the window's end (or at the quota, or a halt)
            self.stop_ns = min(self.stop_ns, end_ns) if self.stop_ns else end_ns

        def may_send() -> int | None:
            """When the user may send its next request, counting it if measured; None: no more.

            The one clock reading decides both whether the request counts against the quota
            and whether it is measured: a second reading could fall in the window after the
            first fell in the warm-up, measuring a request the quota never counted."""
            nonlocal issued
            now = time.perf_counter_ns()
            if self.cut_off or self.halt is not None or (end_ns is not None and now >= end_ns):
                return None
            if now >= self.window_ns:
                if quota is not None and issued >= quota:
                    return None
                issued += 1
                if issued == quota:
                    self._stop_sending(now)
            return now

        async def user(slot: int) -> None:
            delay = start_ns + slot * ramp_ns - time.perf_counter_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            while True:
                session = self.workload.session(next(counter))
                for turn in range(session.turns):
                    if turn and not await self._think():
                        return
                    now = may_send()
                    if now is None:
                        return
                    record = await self._turn(session, turn, now, now < self.window_ns)
                    if (
                        record.retry_after_s is not None
                        and not self.no_more.is_set()
                        and not await self._wait_as_asked(record, record.retry_after_s, end_ns)
                    ):
                        return
                    if not record.ok:  # the next turn would lack this one's answer
                        break

        loop = asyncio.get_running_loop()
        await self._drain(
            [loop.create_task(user(k * self.workers + self.worker)) for k in range(users)]
        )

    async def _wait_as_asked(
        self, record: RequestRecord, asked_s: float, end_ns: int | None
    ) -> bool:
        """Wait the Retry-After `record` got (capped; the window's end or the last send end
        it early) and note the wait in it. False: the wait reached the end, send no more."""
        started = time.perf_counter_ns()
        until = started + int(min(asked_s, RETRY_AFTER_CAP_S) * 1e9)
        more = end_ns is None or until < end_ns
        if end_ns is not None:
            until = min(until, end_ns)
        if until > started:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.no_more.wait(), (until - started) / 1e9)
        record.waited_s = (time.perf_counter_ns() - started) / 1e9
        return more and not self.no_more.is_set()

    def _stop_sending(self, now_ns: int) -> None:
        """The load has sent its last request: the grace for those in flight starts now."""
        self.stop_ns = min(self.stop_ns, now_ns) if self.stop_ns else now_ns
        self.no_more.set()
        self.rearm.set()

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for the load's tasks; once the last request has left, those still running get
        `grace_s`, then are cancelled and their requests recorded as `Unfinished` (by `_one`)."""
        grace_s = self.config.grace_s
        everything = asyncio.ensure_future(asyncio.wait(tasks)) if tasks else None
        try:
            while everything is not None and not everything.done() and not self.cut_now:
                timeout = None
                if grace_s is not None and self.stop_ns:
                    timeout = (self.stop_ns - time.perf_counter_ns()) / 1e9 + grace_s
                    if timeout <= 0:
                        break
                self.rearm.clear()
                rearmed = asyncio.ensure_future(self.rearm.wait())
                await asyncio.wait(
                    {everything, rearmed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                rearmed.cancel()
        finally:
            if everything is not None:
                everything.cancel()
            pending = [task for task in tasks if not task.done()]
            if pending:
                self.cut_off = True
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def _open_loop(self, start_ns: int) -> None:
        tasks: set[asyncio.Task[None]] = set()
        sending = self._sending = asyncio.ensure_future(self._send_schedule(start_ns, tasks))
        if self.halt is not None:  # stopped before it began
            sending.cancel()
        try:
            await asyncio.wait({sending})  # a halt cancels it: the schedule ends there
        finally:
            sending.cancel()
        self._stop_sending(time.perf_counter_ns())
        await self._drain(list(tasks))

    async def _send_schedule(self, start_ns: int, tasks: set[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        for arrival in open_schedule(self.config, self.worker, self.workers):
            target = start_ns + int(arrival.offset_s * 1e9)
            await self._wait_until(target)
            task = loop.create_task(self._request(arrival, target))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _request(self, arrival: Arrival, intended_ns: int) -> None:
        """An arrival's session: its first turn on schedule, each later one after the answer
        before it (and the think time), while the load still sends."""
        session = self.workload.session(arrival.index, arrival.input_tokens, arrival.output_tokens)
        record = await self._turn(session, 0, intended_ns, arrival.warmup)
        for turn in range(1, session.turns):
            if not record.ok or not await self._think():  # False once the load ended
                return
            now = time.perf_counter_ns()
            record = await self._turn(session, turn, now, now < self.window_ns)

    async def _think(self) -> bool:
        """A session's pause before its next turn; False: the load ended meanwhile."""
        think_s = self.config.think_s
        if think_s > 0 and not self.no_more.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.no_more.wait(), think_s)
        return not self.no_more.is_set() and not self.cut_off

    async def _turn(
        self, session: Session, turn: int, intended_ns: int, warmup: bool
    ) -> RequestRecord:
        """Send a session's turn `turn` and give its answer to the session."""
        planned = session.plan(turn)
        record, answer = await self._one(planned, session.number(turn), intended_ns, warmup)
        if self.config.turns > 1:
            record.session, record.turn = session.index, turn
        if answer is not None:
            session.answered(answer)
        return record

    async def _wait_until(self, target_ns: int) -> None:
        """Sleep, then yield-spin the last stretch: timers are only good to about 1 ms.

        The stretch is `spin_ms`, or longer where sleeps are seen to wake later than that
        (a VM whose idle vCPU is descheduled wakes up to several ms late): twice the decaying
        maximum of recent wake-up delays, capped at SPIN_CAP_NS.
        """
        clock = time.perf_counter_ns
        spin = self.spin_ns
        if spin:
            spin = max(spin, min(SPIN_CAP_NS, int(2 * self.timer_late_ns)))
        wake = target_ns - spin
        delay = wake - clock()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
            self.timer_late_ns = max(float(clock() - wake), self.timer_late_ns * LATE_DECAY)
        t = clock()
        if t < target_ns:
            while clock() < target_ns:  # noqa: ASYNC110 - a yield-spin, streams still read
                await asyncio.sleep(0)
            self.check.spin_s += (clock() - t) / 1e9

    async def _one(
        self, planned: Planned, index: int, intended_ns: int, warmup: bool
    ) -> tuple[RequestRecord, str | None]:
        """Send one request and record how it went, whatever happens (never raises, except
        for a cancellation that is not the run's own cut-off); the answer's text if it ended."""
        started_ns = time.perf_counter_ns()
        record = RequestRecord(
            index=index,
            worker=self.worker,
            warmup=warmup,
            intended_s=(intended_ns - self.window_ns) / 1e9,
            lag_ms=0.0,
            ok=False,
            asked_input_tokens=planned.asked_input,
            asked_output_tokens=planned.asked_output,
            prefix_group=planned.prefix_group,
        )
        sent_ns, pool_wait_ns = started_ns, 0  # unless it succeeded: when it was tried
        answer = None
        self.inflight += 1
        try:
            result = await self._send(planned)
        except Cancelled as exc:  # the workload's own cancellation: neither ok nor failed
            record_failure(record, exc, self.secrets)
            record.cancelled = True
            record.e2e_ms = (time.perf_counter_ns() - intended_ns) / 1e6
        except Exception as exc:  # every failure is a counted error, never a crash
            record_failure(record, exc, self.secrets)
            now = time.perf_counter_ns()
            record.e2e_ms = (now - intended_ns) / 1e6
            if (halt := self.watch.failure(exc, now)) is not None:
                self._halt(halt)
            drop_frames(exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self.cut_off or task is None:
                raise
            task.uncancel()  # our own cut-off, handled here: the task goes on to record it
            record_failure(record, Unfinished(self._unfinished()), self.secrets)
            # Whenever it was sent, it spanned the measured window: it counts there, so a run
            # against a server that never answers cannot report "0 completed, 0 failed".
            record.warmup = False
            record.e2e_ms = (time.perf_counter_ns() - intended_ns) / 1e6
        else:
            self.watch.success()
            record_result(record, result, intended_ns)
            if record.ttft_ms is not None:
                self.recent_ttft.append(record.ttft_ms)
            self._opened(result)
            if result.attempts == 1 and result.sent_ns:  # a retry's stamps are a later send's
                sent_ns, pool_wait_ns = result.sent_ns, result.pool_wait_ns
            if self.config.turns > 1:  # only a conversation needs the answer's text
                answer = result.text
        finally:
            self.inflight -= 1
        self.ended[_ending(record)] += 1
        # Schedule lag is the real send (the connection in hand, the request written next)
        # minus the intended one: a wait for a busy loop or for a pool connection is in it.
        record.lag_ms = (sent_ns - intended_ns) / 1e6
        record.pool_wait_ms = pool_wait_ns / 1e6
        self.records.append(record)
        return record, answer

    async def _send(self, planned: Planned) -> StreamResult:
        """The request, cancelled by the client `planned.cancel_after_s` after it was sent
        (`Cancelled`) when the workload says so (--cancel-rate)."""
        run = self.engine.run(planned.body, endpoint=self.config.endpoint)
        if planned.cancel_after_s is None:
            return await run
        scope = asyncio.timeout(planned.cancel_after_s)
        try:
            async with scope:
                return await run
        except TimeoutError:
            if not scope.expired():  # the engine's own time limit: a failure like any other
                raise
            raise Cancelled(
                f"cancelled by the client after {planned.cancel_after_s:g} s (--cancel-rate)"
            ) from None

    def _unfinished(self) -> str:
        """Why a request still in flight was cut off."""
        if self.cut_now and self.halt is not None:
            return f"no end: cut off by a second {self.halt.by}"
        grace = self.config.grace_s
        within = "" if grace is None else f" within {grace:g} s after the load's last send"
        return f"no end{within}: cut off when the run ended (--grace)"

    async def _report_progress(self) -> None:
        while self.progress is not None:
            await asyncio.sleep(PROGRESS_EVERY_S)
            self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.snapshot())

    def _current_phase(self, now_ns: int) -> str:
        """One of PHASES: priming and done are said; a running load's phase is its clock's."""
        if self.phase != "running":
            return self.phase
        if now_ns < self.window_ns:
            return "warm-up"
        return "draining" if self.stop_ns and now_ns >= self.stop_ns else "measuring"

    def snapshot(self) -> dict[str, Any]:
        """Live counters for the progress display: plain data (it crosses processes) that
        says its own load, so a display needs nothing else (a sweep's steps differ)."""
        config = self.config
        now = time.perf_counter_ns()
        ttft = sorted(self.recent_ttft)
        return {
            "worker": self.worker,
            "label": config.label,
            "phase": self._current_phase(now),
            # From the measured window's start; negative during the warm-up, 0 before the run.
            "elapsed_s": (now - self.window_ns) / 1e9 if self.window_ns else 0.0,
            "done": self.ended["done"],
            "failed": self.ended["failed"],
            "cancelled": self.ended["cancelled"],
            "warmup_done": self.ended["warm-up"],
            "inflight": self.inflight,
            "primed": self.primers_done,
            "priming": self.priming,
            "ttft_p50_ms": ttft[len(ttft) // 2] if ttft else None,
            "requests": config.requests,
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "grace_s": config.grace_s,
        }


def _ending(record: RequestRecord) -> str:
    """How a request counts on the live display."""
    if record.warmup:
        return "warm-up"
    return "done" if record.ok else "cancelled" if record.cancelled else "failed"
