"""Load shapes: when each request is meant to leave, and which worker sends it.

An open-loop schedule is a list of intended send offsets fixed before the run, so a slow
endpoint cannot slow the arrivals down (the closed-loop mistake called coordinated
omission). Inter-arrival gaps are constant, or gamma-distributed with shape `burstiness` and
mean 1/rate as in vLLM's `bench serve`: shape 1 is a Poisson process, below 1 burstier,
above 1 more regular. Every worker draws the same global schedule from the seed and keeps
every N-th arrival, so N workers together send exactly the one-worker schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

    from engine.loadtest.config import LoadConfig

CHUNK = 4096


def arrival_offsets(rate: float, arrival: str, burstiness: float, seed: int) -> Iterator[float]:
    """Endless intended send offsets in seconds from the run start (the first is 0)."""
    if arrival == "constant":
        index = 0
        while True:
            yield index / rate
            index += 1
    rng = np.random.default_rng(seed)
    t = 0.0
    while True:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=CHUNK)
        offsets = t + np.concatenate(([0.0], np.cumsum(gaps[:-1])))
        t = float(offsets[-1] + gaps[-1])
        yield from offsets.tolist()


@dataclass(frozen=True, slots=True)
class Arrival:
    """One scheduled request: global index and intended offset from the run start."""

    index: int
    offset_s: float
    warmup: bool


def open_schedule(config: LoadConfig, worker: int = 0, workers: int = 1) -> Iterator[Arrival]:
    """This worker's arrivals: warm-up first, then the measured window until its end or count."""
    assert config.rate is not None  # noqa: S101 - callers check open_loop
    end_s = None if config.duration_s is None else config.warmup_s + config.duration_s
    measured = 0
    for index, offset in enumerate(
        arrival_offsets(config.rate, config.arrival, config.burstiness, config.seed)
    ):
        if end_s is not None and offset >= end_s:
            return
        warmup = offset < config.warmup_s
        if not warmup:
            if config.requests is not None and measured >= config.requests:
                return
            measured += 1
        if index % workers == worker:
            yield Arrival(index, offset, warmup)


def sweep_rates(low: float, high: float, steps: int) -> list[float]:
    """`steps` rates strictly between the one-stream rate and the saturated rate (GuideLLM)."""
    if steps <= 0 or high <= low:
        return []
    return [low + (high - low) * k / (steps + 1) for k in range(1, steps + 1)]
