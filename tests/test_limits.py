"""Limits on a fake clock: sleeping advances `FakeClock.now`, so nothing waits in real time."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.limits import (
    WINDOW_S,
    AdaptiveConcurrency,
    RateLimiter,
    backoff_delay,
    parse_retry_after,
)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass(slots=True)
class Granted:
    arrival: float
    t: float
    estimate: float
    actual: float


def simulate(
    limiter: RateLimiter, clock: FakeClock, requests: list[tuple[float, int, int]]
) -> list[Granted]:
    """Requests (gap after the previous arrival, estimate, actual) in FIFO order; each
    settles at its grant, as a request that fails at once would."""

    async def run() -> list[Granted]:
        arrival, grants = 0.0, []
        for gap, estimate, actual in requests:
            arrival += gap
            clock.now = max(clock.now, arrival)
            (await limiter.acquire(estimate)).settle(actual)
            grants.append(Granted(arrival, clock.now, estimate, actual))
        return grants

    return asyncio.run(run())


def check_windows(grants: list[Granted], limit: float) -> None:
    for k, grant in enumerate(grants):
        t, size = grant.t, grant.estimate
        total = sum(g.actual for g in grants[: k + 1] if g.t + WINDOW_S > t)
        # safety: in (t - 60, t] only the last grant's own under-estimate can overshoot
        assert total <= max(limit, size) + max(0.0, grant.actual - size)
        if t > grant.arrival and (k == 0 or t > grants[k - 1].t):
            # liveness: a request that waited was granted the moment a grant expired...
            assert any(math.isclose(g.t + WINDOW_S, t) for g in grants[:k])
            # ...and it did not fit just before that moment
            before = [g.actual for g in grants[:k] if g.t + WINDOW_S > t - 1e-6]
            assert sum(before) + size > limit or (size > limit and before)


# ---- RateLimiter: the 60 s window rule ------------------------------------------------

# Gaps that land on (60) and just inside (59.5, 59.999) a window's edge; floats the rest.
gaps = st.one_of(
    st.sampled_from([0.0, 0.0, 1.0, 30.0, 59.5, 59.999, 60.0]),
    st.floats(0.0, 90.0, allow_nan=False),
)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(rpm=st.integers(1, 12), arrivals=st.lists(gaps, min_size=1, max_size=50))
def test_rpm_window_never_exceeded(rpm: int, arrivals: list[float]) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=rpm, tpm=None, clock=clock, sleep=clock.sleep)
    check_windows(simulate(limiter, clock, [(gap, 1, 1) for gap in arrivals]), rpm)


@settings(derandomize=True, max_examples=80, deadline=None)
@given(
    tpm=st.integers(100, 2000),
    requests=st.lists(
        st.tuples(gaps, st.integers(0, 3000), st.floats(0.0, 2.0, allow_nan=False)),
        min_size=1,
        max_size=40,
    ),
)
def test_tpm_window_holds_for_estimates(tpm: int, requests: list[tuple[float, int, float]]) -> None:
    """Actual tokens in a window stay within tpm but for what its last grant under-estimated
    (nobody knew yet); an oversize request is its own limit, alone in its window."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=tpm, clock=clock, sleep=clock.sleep)
    plan = [(gap, est, int(est * ratio)) for gap, est, ratio in requests]
    check_windows(simulate(limiter, clock, plan), tpm)


async def test_under_estimate_is_debt_that_delays_later_grants() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=1000, clock=clock, sleep=clock.sleep)
    (await limiter.acquire(100)).settle(900)
    clock.now = 10.0
    await limiter.acquire(200)
    assert clock.now == WINDOW_S  # 900 + 200 > 1000 until the first grant leaves the window


async def test_over_estimate_frees_room_at_once() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=1000, clock=clock, sleep=clock.sleep)
    (await limiter.acquire(900)).settle(100)
    await limiter.acquire(800)
    assert clock.now == 0.0


async def test_late_settle_books_the_excess_at_settle_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=1000, clock=clock, sleep=clock.sleep)
    reservation = await limiter.acquire(100)
    clock.now = 70.0  # the grant has left the window
    reservation.settle(700)  # 600 more than booked: counted from now on
    await limiter.acquire(401)
    assert clock.now == 70.0 + WINDOW_S


async def test_oversize_request_is_granted_alone_in_an_empty_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=100, clock=clock, sleep=clock.sleep)
    await limiter.acquire(1)
    clock.now = 5.0
    await limiter.acquire(500)
    assert clock.now == WINDOW_S
    await limiter.acquire(1)
    assert clock.now == 2 * WINDOW_S


async def test_fractional_rpm_admits_one_request_per_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=0.5, tpm=None, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await limiter.acquire(0)
    assert clock.now == 2 * WINDOW_S


async def test_rpm_and_tpm_are_granted_together() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=2, tpm=1000, clock=clock, sleep=clock.sleep)
    await limiter.acquire(10)
    clock.now = 1.0
    await limiter.acquire(990)
    clock.now = 2.0
    await limiter.acquire(0)  # tokens free at t=60? no: rpm is the binding limit
    assert clock.now == WINDOW_S


@pytest.mark.parametrize(("rpm", "tpm"), [(0, None), (None, -1.0)])
def test_limits_must_be_positive(rpm: float | None, tpm: float | None) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        RateLimiter(rpm=rpm, tpm=tpm)


async def test_negative_tokens_rejected() -> None:
    limiter = RateLimiter(rpm=None, tpm=None)
    with pytest.raises(ValueError, match="estimated_tokens"):
        await limiter.acquire(-1)
    with pytest.raises(ValueError, match="actual_tokens"):
        (await limiter.acquire(1)).settle(-1)


# ---- the FIFO gate (RateLimiter's turn-taking) ----------------------------------------


async def test_big_request_is_not_starved_by_small_ones() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=10, clock=clock, sleep=clock.sleep)
    await limiter.acquire(10)
    order: list[int] = []

    async def take(n: int) -> None:
        await limiter.acquire(n)
        order.append(n)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(take(8))
        for _ in range(5):
            tg.create_task(take(1))
    assert order == [8, 1, 1, 1, 1, 1]  # first come, first served, whatever the size
    assert clock.now == pytest.approx(120.0)


async def test_cancelled_head_hands_the_turn_to_the_next_waiter() -> None:
    clock = FakeClock()
    blocked = asyncio.Event()

    async def never(seconds: float) -> None:
        await blocked.wait()

    limiter = RateLimiter(rpm=None, tpm=10, clock=clock, sleep=never)
    first = await limiter.acquire(10)
    head = asyncio.create_task(limiter.acquire(5))
    second = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0)
    head.cancel()
    first.settle(9)  # one token freed: enough for the second waiter, not for the head
    await second
    assert head.cancelled()


# ---- AdaptiveConcurrency -----------------------------------------------------------------


def test_burst_of_429s_halves_once_per_cooldown() -> None:
    clock = FakeClock()
    ac = AdaptiveConcurrency(16, minimum=3, maximum=32, cooldown_s=2.0, clock=clock)
    for _ in range(10):
        ac.on_rate_limited()
    assert ac.limit == 8
    clock.now = 2.0
    ac.on_rate_limited()
    ac.on_rate_limited()
    assert ac.limit == 4
    clock.now = 10.0
    ac.on_rate_limited()
    assert ac.limit == 3  # floor


def test_additive_recovery_up_to_maximum() -> None:
    ac = AdaptiveConcurrency(4, maximum=6, clock=FakeClock())
    for _ in range(3):
        ac.on_success()
    assert ac.limit == 4
    ac.on_success()
    assert ac.limit == 5
    for _ in range(100):
        ac.on_success()
    assert ac.limit == 6


async def test_waiters_are_woken_in_order_when_the_limit_grows() -> None:
    ac = AdaptiveConcurrency(1, maximum=4, clock=FakeClock())
    await ac.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await ac.acquire()
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert (ac.in_flight, order) == (1, [])
    ac.on_success()  # 1 success at limit 1: limit becomes 2
    await asyncio.sleep(0)
    assert (ac.limit, ac.in_flight, order) == (2, 2, [0])
    ac.release()
    await asyncio.gather(*tasks[:2])
    assert order == [0, 1]
    tasks[2].cancel()
    await asyncio.gather(tasks[2], return_exceptions=True)
    assert ac.in_flight == 2


async def test_context_manager_releases_and_cancelled_grant_is_passed_on() -> None:
    ac = AdaptiveConcurrency(1, maximum=1, clock=FakeClock())
    async with ac:
        assert ac.in_flight == 1
        waiter = asyncio.create_task(ac.acquire())
        await asyncio.sleep(0)
    waiter.cancel()  # handed the slot on exit, cancelled before it ran: slot must return
    await asyncio.gather(waiter, return_exceptions=True)
    assert ac.in_flight == 0
    with pytest.raises(RuntimeError, match="without acquire"):
        ac.release()


def test_adaptive_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="minimum <= initial"):
        AdaptiveConcurrency(10, minimum=2, maximum=5)


# ---- parse_retry_after and backoff_delay --------------------------------------------------

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="absent"),
        pytest.param({"retry-after-ms": "1500", "retry-after": "9"}, 1.5, id="ms-preferred"),
        pytest.param({"Retry-After-Ms": "250"}, 0.25, id="ms-case-insensitive"),
        pytest.param({"retry-after-ms": "soon", "Retry-After": "3"}, 3.0, id="bad-ms-falls-back"),
        pytest.param({"Retry-After": "7"}, 7.0, id="seconds"),
        pytest.param({"Retry-After": "0.5"}, 0.5, id="fractional-seconds"),
        pytest.param({"Retry-After": "-4"}, 0.0, id="negative-clamped"),
        pytest.param({"retry-after-ms": "-4"}, 0.0, id="negative-ms-clamped"),
        pytest.param({"Retry-After": "nan"}, None, id="nan"),
        pytest.param({"Retry-After": "inf"}, None, id="inf"),
        pytest.param({"Retry-After": "tomorrow"}, None, id="garbage"),
        pytest.param({"Retry-After": ""}, None, id="empty"),
        pytest.param({"Retry-After": "Wed, 01 Jan 2025 00:00:30 GMT"}, 30.0, id="http-date"),
        pytest.param({"Retry-After": "Wed, 01 Jan 2025 00:00:30 -0000"}, 30.0, id="date-naive"),
        pytest.param({"Retry-After": format_datetime(NOW, usegmt=True)}, 0.0, id="date-now"),
        pytest.param({"Retry-After": "Tue, 31 Dec 2024 23:00:00 GMT"}, 0.0, id="date-past"),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, wall_clock=NOW.timestamp) == expected


@pytest.mark.parametrize("attempt", [0, 1, 3, 5, 6, 10, 10_000, -1])
def test_backoff_full_jitter_bounds(attempt: int) -> None:
    ceiling = min(20.0, 0.5 * 2 ** max(attempt, 0)) if attempt < 100 else 20.0
    assert backoff_delay(attempt, rng=lambda: 1.0) == ceiling
    assert backoff_delay(attempt, rng=lambda: 0.0) == 0.0
    rng = random.Random(attempt).random
    assert all(0.0 <= backoff_delay(attempt, rng=rng) <= ceiling for _ in range(50))


async def test_a_settle_wakes_the_request_waiting_for_room() -> None:
    """An over-estimate settled lower frees room at once: the waiting request is granted
    then, not after the minute it computed while the estimate stood."""
    clock = FakeClock()
    never = asyncio.Event()

    async def sleep_until_woken(seconds: float) -> None:
        clock.slept.append(seconds)
        await never.wait()  # only a wake ends this nap

    limiter = RateLimiter(None, 2000, clock=clock, sleep=sleep_until_woken)
    first = await limiter.acquire(1030)
    waiting = asyncio.create_task(limiter.acquire(1030))
    while not clock.slept:  # the second request is napping on the full window
        await asyncio.sleep(0)
    assert clock.slept == [pytest.approx(WINDOW_S)]
    first.settle(20)
    second = await asyncio.wait_for(waiting, 10)
    assert clock.now == 0.0  # granted at once, no time passed
    second.settle(20)


async def test_a_settle_above_the_estimate_wakes_nobody() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, 100, clock=clock, sleep=clock.sleep)
    first = await limiter.acquire(60)
    first.settle(90)  # debt: the next request waits for the grant to leave the window
    await limiter.acquire(60)
    assert clock.now == pytest.approx(WINDOW_S)
