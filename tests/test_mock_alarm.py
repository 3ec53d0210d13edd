"""The mock's precise alarm (a timerfd the loop reads) on both real loops: it rings once, never
before its time, where it was last moved to, and not at all once cancelled; the ticker built
on it sends every token at or after its deadline."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import uvloop

from engine.mock.alarm import Alarm
from engine.mock.config import DelaySampler, MockConfig
from engine.mock.pacing import Schedule, Ticker
from engine.mock.stats import MockStats
from tests.test_mock import FakeRender, expected_deadlines

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd: Linux")
LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]


def run_on(
    new_loop: Callable[[], asyncio.AbstractEventLoop], main: Coroutine[Any, Any, Any]
) -> Any:
    loop = new_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main, 10))
    finally:
        loop.close()


def make_alarm(loop: asyncio.AbstractEventLoop, rang: list[float]) -> Alarm:
    alarm = Alarm.create(loop, lambda: rang.append(time.monotonic()))
    assert alarm is not None  # Linux's libc has timerfd
    return alarm


@pytest.mark.parametrize("new_loop", LOOPS)
def test_an_alarm_rings_once_at_its_latest_time_never_before(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> tuple[list[float], float]:
        loop, rang = asyncio.get_running_loop(), list[float]()
        alarm = make_alarm(loop, rang)
        when = time.monotonic() + 0.0153
        alarm.arm(when - 0.010)
        alarm.arm(when)  # moved later: only this one rings
        done = loop.create_future()
        loop.call_later(0.060, done.set_result, None)  # long after: nothing more may ring
        await done
        alarm.close()
        return rang, when

    rang, when = run_on(new_loop, main())
    assert len(rang) == 1
    assert rang[0] >= when


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_cancelled_alarm_never_rings_and_a_past_time_rings_at_once(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()
        cancelled: list[float] = []
        late: list[float] = []
        quiet = make_alarm(loop, cancelled)
        quiet.arm(time.monotonic() + 0.005)
        quiet.cancel()
        past = make_alarm(loop, late)
        past.arm(time.monotonic() - 1.0)
        done = loop.create_future()
        loop.call_later(0.040, done.set_result, None)
        await done
        quiet.close()
        past.close()
        return cancelled, late

    cancelled, late = run_on(new_loop, main())
    assert cancelled == []
    assert len(late) == 1


class StampedTransport:
    """The time.monotonic() (the clock deadlines are on) at which each token was written."""

    def __init__(self) -> None:
        self.sent: list[float] = []

    def write(self, data: bytes) -> None:
        self.sent += [time.monotonic()] * data.count(b"\n\n")

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.mark.parametrize("new_loop", LOOPS)
def test_the_precise_ticker_sends_no_token_before_its_deadline(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Eight streams of ten tokens at jittered deadlines, arriving 1.7 ms apart: each token's
    write is at or after its own deadline, every token goes, and no wake-up finds nothing due
    (a timerfd never rings early)."""
    config = MockConfig(ttft_ms=7.3, itl_ms=3.1, jitter=0.3)
    n = 10

    async def main() -> tuple[list[tuple[StampedTransport, list[float]]], MockStats]:
        loop, stats = asyncio.get_running_loop(), MockStats()
        ticker = Ticker(loop, stats, precise=True)
        runs, waits = [], []
        for i in range(8):
            start = time.monotonic()
            sampler = DelaySampler(config, config.itl_ms, random.Random(i))
            transport = StampedTransport()
            schedule = Schedule(n, start, config.ttft_ms / 1000, sampler)
            waits.append(ticker.run(FakeRender(n), schedule, transport))  # type: ignore[arg-type]
            runs.append((transport, expected_deadlines(config, start, n, seed=i)))
            await asyncio.sleep(0.0017)
        await asyncio.gather(*waits)
        ticker.close()
        return runs, stats

    runs, stats = run_on(new_loop, main())
    for transport, due in runs:
        assert len(transport.sent) == n + 1  # and the tail
        assert all(sent >= deadline for sent, deadline in zip(transport.sent[:n], due, strict=True))
    assert stats.events_sent == 8 * (n + 1)
    assert stats.ticker_early == 0
