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
import math
import time
from typing import TYPE_CHECKING, Protocol

from engine.mock.alarm import Alarm

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from engine.mock.config import DelaySampler
    from engine.mock.stats import MockStats

# A token is never sent before its deadline, with no slack: a real server cannot send what it
# has not generated, and a TTFT below the configured one would mislead a load test.
MAX_BATCH_EVENTS = 1024  # caps one write when a fast stream is far behind its schedule
HIGH_WATER_BYTES = 256 * 1024  # a client this far behind gets its tokens later, coalesced
BACKPRESSURE_RETRY_S = 0.01
SLOTS_PER_S = 1000  # the timing wheel's slots: 1 ms, uvloop's clock resolution
# The precise alarm rings at most once a millisecond, like the loops' own timers: when deadlines
# are sparse every one is met to the ~0.1 ms, and when they are dense (1,000 streams at 10
# tokens/s) the due tokens wait for the next ring and go out together, for the loop timers' CPU
# (21 µs/token in benchmarks/mock_server.py; 33-38 µs with a 0.2 ms gap, 46-56 with none).
ALARM_GAP_S = 0.001
# time.monotonic()'s: a deadline this close counts as reached, as asyncio's own loop does, so
# that float noise in "first + k * itl" never costs a wake-up.
EXACT_RESOLUTION_S = 1e-9


def clock_resolution_s(loop: asyncio.AbstractEventLoop) -> float:
    """uvloop's clock counts whole milliseconds (libuv's uv_now); asyncio's is exact."""
    return 0.001 if type(loop).__module__.startswith("uvloop") else 0.0


def delay_until(due: float, now: float, resolution_s: float) -> float:
    """How long to ask the loop to wait, from the exact time `now`, so as not to wake before
    `due`.

    uvloop rounds a timer's delay to the nearest millisecond (0 means "at once") and waits it
    from the true time, so the delay is rounded up instead: a timer armed at the deadline
    itself could fire before it, and re-arming then spins until the clock moves. asyncio waits
    exactly what it is asked.
    """
    wait = due - now
    if wait <= 0 or not resolution_s:
        return max(wait, 0.0)
    return math.ceil((wait - EXACT_RESOLUTION_S) / resolution_s) * resolution_s


class Renderer(Protocol):
    """What a dialect offers the pacer (ResponsesStream, ChatStream, CompletionsStream).

    `deltas(start, stop)` are the events of tokens start..stop-1, which may be more than one a
    token (an output item that opens or closes, several choices); `delta(index)` is token
    `index`'s event when it is exactly one, else None.
    """

    n: int

    def delta(self, index: int) -> bytes | None: ...

    def deltas(self, start: int, stop: int) -> list[bytes]: ...

    def tail(self) -> list[bytes]: ...


class Schedule:
    """Absolute token deadlines of one stream.

    Deadlines are on the exact clock (`time.monotonic()`, which uvloop's clock floors to the
    millisecond), counted from the request's arrival: see `delay_until` for the wait.
    """

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
        if start >= self.n or self.next_due > now:
            return start, start
        if self._constant and self._itl > 0:  # token k is due at first + k * itl
            first, itl = self._first, self._itl
            due = int((now - first) / itl) + 1  # tokens 0..due-1 are due
            # The division may be one off the deadlines as floats (first + k * itl): agree with
            # them, so that no token goes early and none due is left for another wake-up.
            if first + due * itl <= now:
                due += 1
            elif first + (due - 1) * itl > now:
                due -= 1
            if due <= start:  # cannot happen (next_due <= now), but never answer "nothing"
                due = start + 1
            elif due > self.n or due - start > MAX_BATCH_EVENTS:
                due = min(self.n, start + MAX_BATCH_EVENTS)
            self.next_due = first + due * itl
        elif self._constant:  # ITL 0: everything at once (in MAX_BATCH_EVENTS writes)
            due = min(self.n, start + MAX_BATCH_EVENTS)
        else:
            due, cap = start, min(self.n, start + MAX_BATCH_EVENTS)
            while due < cap and self.next_due <= now:
                due += 1
                self.next_due += self._sampler.next_itl()
        self.sent = due
        return start, due


class _Paced:
    __slots__ = ("done", "due", "events", "render", "schedule", "transport")

    def __init__(
        self,
        render: Renderer,
        schedule: Schedule,
        transport: asyncio.Transport,
        done: asyncio.Future[int],
    ) -> None:
        self.render = render
        self.schedule = schedule
        self.transport = transport
        self.done = done
        self.events = 0
        self.due = schedule.next_due


class Ticker:
    """One timer for all plain streams of a server; `await ticker.run(...)` per stream.

    Streams wait on a timing wheel of 1 ms slots (a dict of lists plus a small heap of slot
    numbers), not on one heap of streams: at 10,000 streams a heap push + pop cost ~2 µs per
    token, a slot append ~0.2 µs. Deadlines stay exact: in the current slot only the streams
    whose own deadline has passed are taken, and the timer is armed at the earliest deadline.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stats: MockStats,
        resolution_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        precise: bool = False,
    ) -> None:
        self._loop = loop
        self._stats = stats
        self._resolution_s = resolution_s  # of the loop's timers: see delay_until
        self._clock = clock  # the exact time, which deadlines are on
        # With `precise`, a timerfd where there is one (wakes within ~50 µs of a deadline),
        # else the loop's timers (whole milliseconds, rounded up).
        self._alarm = Alarm.create(loop, self._fire) if precise else None
        self._fired_at = -math.inf
        self._slots: dict[int, list[_Paced]] = {}
        self._order: list[int] = []  # heap of the slot numbers present in _slots
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # invariant: the earliest deadline waiting, when any waits
        self._firing = False

    def run(
        self,
        render: Renderer,
        schedule: Schedule,
        transport: asyncio.Transport,
    ) -> asyncio.Future[int]:
        """Pace `render`'s deltas and tail onto `transport`; resolves to the events written."""
        done: asyncio.Future[int] = self._loop.create_future()
        paced = _Paced(render, schedule, transport, done)
        self._push(paced)
        return done

    def close(self) -> None:
        """End every waiting stream now (server shutdown): close its connection and resolve its
        handler, so that no handler outlives aiohttp's shutdown timeout (whose race with a
        handler finishing late logs `InvalidStateError` from aiohttp's web_protocol)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        if self._alarm is not None:
            self._alarm.close()
            self._alarm = None
        for waiting in self._slots.values():
            for paced in waiting:
                if not paced.done.done():
                    paced.transport.close()  # the client sees a truncated body
                    paced.done.set_result(paced.events)
        self._slots.clear()
        self._order.clear()

    def _push(self, paced: _Paced) -> None:
        slot = int(paced.due * SLOTS_PER_S)
        waiting = self._slots.get(slot)
        if waiting is None:
            self._slots[slot] = [paced]
            heapq.heappush(self._order, slot)
        else:
            waiting.append(paced)
        if paced.due < self._timer_at and not self._firing:  # _fire arms once at its end
            self._arm(paced.due)

    def _arm(self, due: float) -> None:
        """Move the one timer to `due`."""
        self._timer_at = due
        if self._alarm is not None:
            self._alarm.arm(max(due, self._fired_at + ALARM_GAP_S))
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = delay_until(due, self._clock(), self._resolution_s)
        self._timer = self._loop.call_later(delay, self._fire)

    def _take_due(self, now: float) -> list[_Paced]:
        """Every stream whose deadline is <= now: whole past slots, part of the current one."""
        slots, order, ready = self._slots, self._order, []
        current = int(now * SLOTS_PER_S)
        while order and order[0] <= current:
            slot = order[0]
            waiting = slots[slot]
            if slot < current:  # the whole slot lies before `now`
                ready += waiting
            else:
                due = [paced for paced in waiting if paced.due <= now]
                if len(due) < len(waiting):
                    slots[slot] = [paced for paced in waiting if paced.due > now]
                    return ready + due
                ready += due
            heapq.heappop(order)
            del slots[slot]
        return ready

    def _fire(self) -> None:
        now, stats = self._clock() + EXACT_RESOLUTION_S, self._stats
        self._fired_at = now
        if (lag := now - self._timer_at) >= 0:  # armed at the earliest deadline: its lateness
            lag = max(lag - EXACT_RESOLUTION_S, 0.0)
            stats.ticker_fires += 1
            stats.ticker_lag_s_total += lag
            stats.ticker_lag_s_max = max(stats.ticker_lag_s_max, lag)
        else:  # nothing to send, re-arm: the loop woke on a millisecond tick for other work
            stats.ticker_early += 1
        self._timer, self._timer_at = None, math.inf
        self._firing = True
        try:
            for paced in self._take_due(now):
                self._step(paced, now)
        finally:
            self._firing = False
        if self._order:  # re-arm at the earliest deadline left (it lies in the first slot)
            self._arm(min(paced.due for paced in self._slots[self._order[0]]))

    def _step(self, paced: _Paced, now: float) -> None:
        """Write what is due of one stream. The hot path: once per token per stream."""
        transport, schedule, render = paced.transport, paced.schedule, paced.render
        if paced.done.done():  # the handler was cancelled: its client went away
            return
        if transport.is_closing():
            paced.done.set_result(paced.events)
            return
        if transport.get_write_buffer_size() > HIGH_WATER_BYTES:
            self._stats.backpressured += 1  # the client, not the server, is behind
            paced.due = now + BACKPRESSURE_RETRY_S  # due tokens pile up, then coalesce
            self._push(paced)
            return
        start, stop = schedule.take_due(now)
        single = render.delta(start) if stop - start == 1 and stop < schedule.n else None
        if single is not None:  # mid-stream: usually exactly one token, one event
            data, events = single, 1
        else:
            batch = render.deltas(start, stop)
            if stop == schedule.n:
                batch += render.tail()
            data, events = b"".join(batch), len(batch)
        if events:
            paced.events += events
            self._stats.events_sent += events
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))  # one HTTP/1.1 chunk
        if stop < schedule.n:
            paced.due = schedule.next_due
            self._push(paced)
        else:
            paced.done.set_result(paced.events)
