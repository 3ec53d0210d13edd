"""Rate limits and adaptive concurrency: pure logic on an injectable clock (stdlib only).

The window guarantee. Providers promise "at most N requests (tokens) per minute". A token
bucket with capacity = rpm and rate = rpm/60 breaks that: a full bucket spent at t=0 plus
the refill over the next 60 s admits up to 2*rpm in one window, and a bucket can only keep
the rule by wasting throughput (capacity + 60*rate <= rpm). So `RateLimiter` keeps a
sliding-window log instead: every grant is stored with its time and size, and a request is
granted at t only if the grants in (t-60, t] plus itself fit the limit. For every 60 s
window, granted requests <= rpm and granted (estimated) tokens <= tpm, exactly and at full
throughput, for one deque entry per grant of the last minute.

Estimates: `Reservation.settle(actual)` rewrites the grant's size while it is in the log, so
an under-estimate becomes debt that delays later grants and an over-estimate frees room at
once: a request waiting for room is woken by the settle and looks again (it does not sleep
out the minute it computed before). The windows already holding that grant exceed tpm by at
most (actual - estimate): those tokens were spent before anyone knew. If the grant has left
the log, a positive difference is booked as a new grant at settle time. A request larger
than the limit is granted alone, once its window is empty, rather than never.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    Clock = Callable[[], float]
    Sleep = Callable[[float], Awaitable[None]]

WINDOW_S = 60.0
T = TypeVar("T")


class _FifoGate(Generic[T]):
    """Admits callers in arrival order: only the head waits on the clock, so a big
    request is never starved by a stream of small ones slipping in ahead of it."""

    def __init__(self, clock: Clock, sleep: Sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._turns: deque[asyncio.Future[None]] = deque()
        self._waker: asyncio.Future[None] | None = None  # the head's nap, ended by `wake`

    def wake(self) -> None:
        """Room may have been freed (an estimate settled lower): the head looks again now."""
        if self._waker is not None and not self._waker.done():
            self._waker.set_result(None)

    async def _nap(self, wait_s: float) -> None:
        """Sleep `wait_s`, or less if `wake` is called meanwhile."""
        self._waker = waker = asyncio.get_running_loop().create_future()
        sleeper = asyncio.ensure_future(self._sleep(wait_s))
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            self._waker = None

    def _wait_s(self, n: float) -> float:
        raise NotImplementedError

    def _take(self, n: float) -> T:
        raise NotImplementedError

    async def _admit(self, n: float) -> T:
        if not self._turns and self._wait_s(n) <= 0:
            return self._take(n)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        if len(self._turns) == 1:
            turn.set_result(None)
        try:
            await turn
            while (wait_s := self._wait_s(n)) > 0:
                await self._nap(wait_s)
            return self._take(n)  # no await between the last check and the take
        finally:
            self._turns.remove(turn)
            if self._turns and not self._turns[0].done():
                self._turns[0].set_result(None)


@dataclass(slots=True)
class _Grant:
    t: float
    amount: float


class _SlidingWindow:
    """Log of grants in the last WINDOW_S seconds; see the module docstring."""

    def __init__(self, limit: float) -> None:
        if not limit > 0:
            raise ValueError(f"limit must be > 0, got {limit}")
        self.limit = limit
        self._grants: deque[_Grant] = deque()
        self._total = 0.0

    def _expire(self, now: float) -> None:
        grants = self._grants
        while grants and grants[0].t + WINDOW_S <= now:
            self._total -= grants.popleft().amount
        if not grants:
            self._total = 0.0  # drop float drift

    def wait_s(self, n: float, now: float) -> float:
        self._expire(now)
        if not self._grants or self._total + n <= self.limit:
            return 0.0
        excess = self._total + n - self.limit
        freed = 0.0
        if n <= self.limit:
            for grant in self._grants:
                freed += grant.amount
                if freed >= excess:
                    return grant.t + WINDOW_S - now
        return self._grants[-1].t + WINDOW_S - now  # oversize: wait for an empty window

    def take(self, n: float, now: float) -> _Grant:
        grant = _Grant(now, n)
        self._grants.append(grant)
        self._total += n
        return grant

    def correct(self, grant: _Grant, actual: float, now: float) -> None:
        self._expire(now)
        if grant.t + WINDOW_S > now:  # still in the log
            self._total += actual - grant.amount
        elif actual > grant.amount:
            self.take(actual - grant.amount, now)
        grant.amount = actual


class Reservation:
    """A granted request; `settle` replaces its token estimate with the real usage."""

    __slots__ = ("_clock", "_grant", "_wake", "_window", "estimated_tokens")

    def __init__(
        self,
        window: _SlidingWindow | None,
        grant: _Grant | None,
        clock: Clock,
        estimated: int,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._window = window
        self._grant = grant
        self._clock = clock
        self._wake = wake
        self.estimated_tokens = estimated

    def settle(self, actual_tokens: int) -> None:
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must be >= 0, got {actual_tokens}")
        if self._window is not None and self._grant is not None:
            freed = actual_tokens < self._grant.amount
            self._window.correct(self._grant, actual_tokens, self._clock())
            if freed and self._wake is not None:
                self._wake()


class RateLimiter(_FifoGate[Reservation]):
    """Requests-per-minute and tokens-per-minute limits, granted together in FIFO order."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(clock, sleep)
        self.rpm_window = None if rpm is None else _SlidingWindow(rpm)
        self.tpm_window = None if tpm is None else _SlidingWindow(tpm)

    def _wait_s(self, n: float) -> float:
        now = self._clock()
        return max(
            0.0 if self.rpm_window is None else self.rpm_window.wait_s(1, now),
            0.0 if self.tpm_window is None else self.tpm_window.wait_s(n, now),
        )

    def _take(self, n: float) -> Reservation:
        now = self._clock()
        if self.rpm_window is not None:
            self.rpm_window.take(1, now)
        grant = None if self.tpm_window is None else self.tpm_window.take(n, now)
        return Reservation(self.tpm_window, grant, self._clock, int(n), self.wake)

    async def acquire(self, estimated_tokens: int) -> Reservation:
        if estimated_tokens < 0:
            raise ValueError(f"estimated_tokens must be >= 0, got {estimated_tokens}")
        return await self._admit(estimated_tokens)


class AdaptiveConcurrency:
    """AIMD limit on requests in flight: +1 per `limit` successes, halved on 429s.

    A wave of requests that hits a rate limit returns many 429s at once; halving once per
    `cooldown_s` treats them as one congestion signal, as TCP does for one window's losses.
    """

    def __init__(
        self,
        initial: int,
        *,
        minimum: int = 1,
        maximum: int,
        cooldown_s: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ValueError(
                f"need 1 <= minimum <= initial <= maximum, got {minimum}, {initial}, {maximum}"
            )
        self.minimum = minimum
        self.maximum = maximum
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._limit = initial
        self._successes = 0
        self._last_decrease = -math.inf
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def on_success(self) -> None:
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            if self._limit < self.maximum:
                self._limit += 1
                self._wake()

    def on_rate_limited(self) -> None:
        now = self._clock()
        if now - self._last_decrease < self.cooldown_s:
            return
        self._last_decrease = now
        self._limit = max(self.minimum, self._limit // 2)
        self._successes = 0

    async def acquire(self) -> None:
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            return
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await slot  # the waker counts us in flight before setting the result
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.release()  # handed a slot we will not use: pass it on
            else:
                self._waiters.remove(slot)
            raise

    def release(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("release() without acquire()")
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            slot = self._waiters.popleft()
            if not slot.done():
                self._in_flight += 1
                slot.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


def parse_retry_after(headers: Mapping[str, str], *, wall_clock: Clock = time.time) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI's, finer) or `Retry-After`
    (delta-seconds or HTTP-date); None when absent or unparsable, negatives clamp to 0."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if (ms := _finite(lowered.get("retry-after-ms"))) is not None:
        return max(0.0, ms / 1000)
    value = lowered.get("retry-after")
    if value is None:
        return None
    if (seconds := _finite(value)) is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with unknown origin (RFC 5322)
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - wall_clock())


def _finite(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def backoff_delay(
    attempt: int,
    base_s: float = 0.5,
    cap_s: float = 20.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)], so retrying clients
    spread out instead of returning in lockstep (AWS architecture blog, 2015)."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 1000))
    return rng() * ceiling
