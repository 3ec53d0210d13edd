"""Token pacing: absolute deadlines per stream, and one shared timer for all plain streams.

`Schedule` turns "now" into "how many tokens are due" against deadlines fixed from the start
of the generation (first token at start + TTFT, then one ITL draw per token), so pacing never
drifts and a late wake-up sends every due token in one write.

`Ticker` drives every fault-free stream of a server from a single `loop.call_at` timer: no task
switch, sleep future or coroutine chain per token, just render + one `transport.write` per due
stream. That is what lets one core hold 10,000 streams at 10 tokens/s each.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio

    from engine.mock.config import DelaySampler
    from engine.mock.stats import MockStats

# Slack for "due now". Zero: a token is never sent before its deadline (a real server cannot
# send what it has not generated, and a TTFT below the configured one would mislead a load
# test); a timer that fires early (libuv rounds to 1 ms) simply re-arms for the same deadline.
TIMER_RESOLUTION_S = 0.0
MAX_BATCH_EVENTS = 1024  # caps one write when a fast stream is far behind its schedule
HIGH_WATER_BYTES = 256 * 1024  # a client this far behind gets its tokens later, coalesced
BACKPRESSURE_RETRY_S = 0.01


class Renderer(Protocol):
    """What a dialect offers the pacer (ResponsesStream, ChatStream)."""

    n: int

    def deltas(self, start: int, stop: int) -> list[bytes]: ...

    def tail(self) -> list[bytes]: ...


class Schedule:
    """Absolute token deadlines of one stream."""

    __slots__ = ("_constant", "_first", "_itl", "_sampler", "n", "next_due", "sent")

    def __init__(self, n: int, start: float, ttft_s: float, sampler: DelaySampler) -> None:
        self.n = n
        self.sent = 0
        self._sampler = sampler
        self._constant = sampler.is_constant
        self._itl = sampler.itl_s
        self._first = self.next_due = start + sampler.jittered(ttft_s)

    @property
    def finished(self) -> bool:
        return self.sent == self.n

    def take_due(self, now: float) -> tuple[int, int]:
        """The token range due by `now` (marked as sent), at most MAX_BATCH_EVENTS long."""
        start = self.sent
        if start >= self.n or self.next_due > now + TIMER_RESOLUTION_S:
            return start, start
        cap = min(self.n, start + MAX_BATCH_EVENTS)
        if self._constant:
            itl = self._itl
            due = cap if itl == 0 else min(cap, int((now + TIMER_RESOLUTION_S - self._first)
                                                     / itl) + 1)
            # next_due <= now said token `start` is due; the division may round just below it
            # (first + k*itl vs k): never answer "nothing", or the timer re-fires in a spin.
            due = max(due, start + 1)
            self.next_due = self._first + due * itl
        else:
            due, limit = start, now + TIMER_RESOLUTION_S
            while due < cap and self.next_due <= limit:
                due += 1
                self.next_due += self._sampler.next_itl()
        self.sent = due
        return start, due


def chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (the response was prepared with chunked encoding)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Paced:
    __slots__ = ("done", "events", "render", "schedule", "transport")

    def __init__(self, render: Renderer, schedule: Schedule, transport: asyncio.Transport,
                 done: asyncio.Future[int]) -> None:
        self.render = render
        self.schedule = schedule
        self.transport = transport
        self.done = done
        self.events = 0


class Ticker:
    """One timer for all plain streams of a server; `await ticker.run(...)` per stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: MockStats) -> None:
        self._loop = loop
        self._stats = stats
        self._heap: list[tuple[float, int, _Paced]] = []
        self._ids = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def run(self, render: Renderer, schedule: Schedule, transport: asyncio.Transport,
            ) -> asyncio.Future[int]:
        """Pace `render`'s deltas and tail onto `transport`; resolves to the events written."""
        done: asyncio.Future[int] = self._loop.create_future()
        self._push(schedule.next_due, _Paced(render, schedule, transport, done))
        return done

    def _push(self, due: float, paced: _Paced) -> None:
        heapq.heappush(self._heap, (due, next(self._ids), paced))
        if due < self._timer_at:
            self._arm(due)

    def _arm(self, due: float) -> None:
        """Move the one timer to `due` (earlier than where it stands)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        heap, now, stats = self._heap, self._loop.time(), self._stats
        if heap and (lag := now - heap[0][0]) >= 0:  # how late the earliest due stream is
            stats.ticker_fires += 1
            stats.ticker_lag_s_total += lag
            stats.ticker_lag_s_max = max(stats.ticker_lag_s_max, lag)
        ready: list[_Paced] = []
        while heap and heap[0][0] <= now + TIMER_RESOLUTION_S:
            ready.append(heapq.heappop(heap)[2])
        for paced in ready:
            self._step(paced, now)
        # The steps re-armed the timer for their own next token; streams left in the heap
        # may be due sooner (e.g. first tokens of later arrivals): the timer must be the min.
        if heap and heap[0][0] < self._timer_at:
            self._arm(heap[0][0])

    def _step(self, paced: _Paced, now: float) -> None:
        transport, schedule = paced.transport, paced.schedule
        if paced.done.done():  # the handler was cancelled: its client went away
            return
        if transport.is_closing():
            paced.done.set_result(paced.events)
            return
        if transport.get_write_buffer_size() > HIGH_WATER_BYTES:
            self._push(now + BACKPRESSURE_RETRY_S, paced)  # due tokens pile up, then coalesce
            return
        start, stop = schedule.take_due(now)
        batch = paced.render.deltas(start, stop)
        if schedule.finished:
            batch += paced.render.tail()
        if batch:
            paced.events += len(batch)
            self._stats.events_sent += len(batch)
            transport.write(chunked(b"".join(batch)))
        if schedule.finished:
            paced.done.set_result(paced.events)
        else:
            self._push(schedule.next_due, paced)
