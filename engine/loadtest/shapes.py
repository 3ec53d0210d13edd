"""Load shapes: when each request is meant to leave, and which worker sends it.

An open-loop schedule is a list of intended send offsets fixed before the run, so a slow
endpoint cannot slow the arrivals down (the closed-loop mistake called coordinated
omission). Inter-arrival gaps are constant, or gamma-distributed with shape `burstiness` and
mean 1/rate as in vLLM's `bench serve`: shape 1 is a Poisson process, below 1 burstier,
above 1 more regular. Every worker draws the same global schedule from the seed and keeps
every N-th arrival, so N workers together send exactly the one-worker schedule.

A rate series ("10:30s,50:60s", ramps "10-50:60s") makes the rate a function of time λ(t)
with cumulative Λ(t). Its arrivals are those of the rate-1 process mapped through Λ⁻¹ (time
rescaling): constant arrivals land at Λ⁻¹(k), so each segment gets exactly its integral of
requests; Poisson and gamma arrivals keep their burstiness at every rate. A trace replays
its file's offsets (engine.loadtest.trace), each arrival carrying its row's lengths.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engine.errors import ConfigError
from engine.loadtest.trace import MISSING, load_trace

if TYPE_CHECKING:
    from collections.abc import Iterator

CHUNK = 4096
UNITS_S = {"ms": 1e-3, "s": 1.0, "m": 60.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_ITEM = re.compile(rf"{_NUMBER}(?:\s*-\s*{_NUMBER})?\s*:\s*{_NUMBER}\s*(ms|s|m)?", re.IGNORECASE)


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


class LoadShape(Protocol):
    """What a schedule reads of a `LoadConfig`: a protocol, not the class, because the
    config imports this module (a series' or a trace's peak sets its rate)."""

    @property
    def rate(self) -> float | None: ...
    @property
    def arrival(self) -> str: ...
    @property
    def burstiness(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def requests(self) -> int | None: ...
    @property
    def duration_s(self) -> float | None: ...
    @property
    def warmup_s(self) -> float: ...
    @property
    def rate_series(self) -> str | None: ...
    @property
    def trace_file(self) -> str | None: ...
    @property
    def trace_speedup(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of a rate series: the rate goes linearly from `start_rate` to `end_rate`
    (equal: a step) over `duration_s`."""

    start_rate: float
    end_rate: float
    duration_s: float

    @property
    def requests(self) -> float:
        """Its integral of the rate: how many requests it sends on average."""
        return (self.start_rate + self.end_rate) / 2 * self.duration_s


def parse_rate_series(text: str) -> tuple[Segment, ...]:
    """`"10:30s,10-50:1m,5:500ms"` -> segments; a bare duration is in seconds."""
    segments: list[Segment] = []
    for item in (part.strip() for part in text.split(",")):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ConfigError(
                f"rate series item {item!r}: expected RATE:DURATION or FROM-TO:DURATION "
                "(e.g. 10:30s, 10-50:1m; units ms, s, m)"
            )
        start, end, duration, unit = match.groups()
        seconds = float(duration) * UNITS_S[(unit or "s").lower()]
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ConfigError(f"rate series item {item!r}: the duration must be > 0")
        rates = float(start), float(end if end is not None else start)
        if not all(math.isfinite(rate) for rate in rates):
            raise ConfigError(f"rate series item {item!r}: the rate must be a finite number")
        segments.append(Segment(rates[0], rates[1], seconds))
    if not any(segment.requests > 0 for segment in segments):
        raise ConfigError(f"rate series {text!r} never sends: every rate is 0")
    return tuple(segments)


def series_length_s(segments: tuple[Segment, ...]) -> float:
    """How long the series runs: its schedule ends there."""
    return math.fsum(segment.duration_s for segment in segments)


class _Rescaled:
    """Λ⁻¹ of a piecewise-linear rate, vectorised: unit-rate offsets to the series' clock."""

    __slots__ = ("_a", "_lengths", "_masses", "_rates", "_starts", "total")

    def __init__(self, segments: tuple[Segment, ...]) -> None:
        masses = np.array([s.requests for s in segments])
        lengths = np.array([s.duration_s for s in segments])
        self._masses = np.concatenate(([0.0], np.cumsum(masses)[:-1]))  # Λ at each start
        self._starts = np.concatenate(([0.0], np.cumsum(lengths)[:-1]))
        self._lengths = lengths
        self._rates = np.array([s.start_rate for s in segments])
        # Within a segment Λ = Λ_i + r0·τ + a·τ² with a = (r1 - r0) / 2D.
        self._a = np.array([(s.end_rate - s.start_rate) / (2 * s.duration_s) for s in segments])
        self.total = float(np.sum(masses))

    def __call__(self, units: np.ndarray) -> np.ndarray:
        # side="right": a unit offset on a boundary belongs to the segment that starts there,
        # past any segment of rate 0 (no mass) that starts there too.
        i = np.searchsorted(self._masses, units, side="right") - 1
        v = units - self._masses[i]
        r0, a = self._rates[i], self._a[i]
        # τ = 2v / (r0 + √(r0² + 4av)): the quadratic's root in the form that stays exact for
        # a step (a = 0), a ramp from 0 (r0 = 0) and a ramp down (a < 0).
        root = r0 + np.sqrt(np.maximum(r0 * r0 + 4 * a * v, 0.0))
        tau = np.divide(2 * v, root, out=np.zeros_like(v), where=root > 0)
        return np.asarray(self._starts[i] + np.minimum(tau, self._lengths[i]))


def series_offsets(
    segments: tuple[Segment, ...], arrival: str, burstiness: float, seed: int
) -> Iterator[float]:
    """The series' intended send offsets (s), ending with it: the unit-rate process of
    `arrival` (same seed, same burstiness) mapped through Λ⁻¹."""
    rescale = _Rescaled(segments)
    units = arrival_offsets(1.0, arrival, burstiness, seed)
    while True:
        chunk = np.fromiter(itertools.islice(units, CHUNK), np.float64, CHUNK)
        inside = chunk[chunk < rescale.total]
        yield from rescale(inside).tolist()
        if inside.size < chunk.size:
            return


@dataclass(frozen=True, slots=True)
class Arrival:
    """One scheduled request: global index, intended offset from the run start, and (from a
    trace) its lengths; None: the workload decides."""

    index: int
    offset_s: float
    warmup: bool
    input_tokens: int | None = None
    output_tokens: int | None = None


def _replay(config: LoadShape) -> Iterator[tuple[float, int | None, int | None]]:
    """A trace's rows in time order: offset on the run's clock and the lengths to ask for.
    Below 1 is sent as 1: no API is asked for an empty answer (BurstGPT's failed rows)."""
    assert config.trace_file is not None  # noqa: S101 - the caller checked
    trace = load_trace(config.trace_file)
    speedup = config.trace_speedup
    for start in range(0, len(trace.offsets_s), CHUNK):
        stop = start + CHUNK
        offsets = (trace.offsets_s[start:stop] / speedup).tolist()
        inputs = trace.input_tokens[start:stop].tolist()
        outputs = trace.output_tokens[start:stop].tolist()
        for offset, tokens_in, tokens_out in zip(offsets, inputs, outputs, strict=True):
            yield (
                offset,
                None if tokens_in == MISSING else max(1, tokens_in),
                None if tokens_out == MISSING else max(1, tokens_out),
            )


def _global_schedule(config: LoadShape) -> Iterator[tuple[float, int | None, int | None]]:
    """Every arrival of the run, in order: a trace, else a rate series, else the rate."""
    if config.trace_file:
        return _replay(config)
    if config.rate_series:
        offsets = series_offsets(
            parse_rate_series(config.rate_series), config.arrival, config.burstiness, config.seed
        )
    else:
        assert config.rate is not None  # noqa: S101 - callers check open_loop
        offsets = arrival_offsets(config.rate, config.arrival, config.burstiness, config.seed)
    return ((offset, None, None) for offset in offsets)


def open_schedule(config: LoadShape, worker: int = 0, workers: int = 1) -> Iterator[Arrival]:
    """This worker's arrivals: warm-up first, then the measured window until its end or count
    (or the series' or the trace's end, whichever comes first)."""
    end_s = None if config.duration_s is None else config.warmup_s + config.duration_s
    measured = 0
    for index, (offset, tokens_in, tokens_out) in enumerate(_global_schedule(config)):
        if end_s is not None and offset >= end_s:
            return
        warmup = offset < config.warmup_s
        if not warmup:
            if config.requests is not None and measured >= config.requests:
                return
            measured += 1
        if index % workers == worker:
            yield Arrival(index, offset, warmup, tokens_in, tokens_out)


def peak_rate(config: LoadShape) -> float:
    """The highest rate the load reaches (req/s), which sizes the priming and the workers:
    a series' highest rate; a trace's busiest second times the speed-up (at least its mean
    rate); else the rate."""
    if config.trace_file:
        trace = load_trace(config.trace_file)
        offsets = trace.offsets_s
        # Requests in [t, t + 1 s) for every request's t: the busiest one-second window.
        within = np.searchsorted(offsets, offsets + 1.0, side="left") - np.arange(offsets.size)
        busiest = float(within.max()) * config.trace_speedup
        span_s = float(offsets[-1]) / config.trace_speedup
        return max(busiest, offsets.size / span_s if span_s > 0 else 0.0)
    if config.rate_series:
        segments = parse_rate_series(config.rate_series)
        return max(max(s.start_rate, s.end_rate) for s in segments)
    if config.rate is None:
        raise ConfigError("no open-loop rate: give a rate, a rate series or a trace")
    return config.rate


def sweep_rates(low: float, high: float, steps: int) -> list[float]:
    """`steps` rates strictly between the one-stream rate and the saturated rate (GuideLLM)."""
    if steps <= 0 or high <= low:
        return []
    return [low + (high - low) * k / (steps + 1) for k in range(1, steps + 1)]
