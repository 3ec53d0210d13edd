"""Token lengths as distributions: what real traffic looks like, not one number per run.

A spec is text, as a command line gives it: `512` (fixed), `256-1024` (uniform, inclusive),
`mean=512,stdev=128,min=32,max=2048` (a normal clipped to [min, max] and rounded), or the
path of a histogram file (`.json` or `.csv` of length -> count). Request `i` of a run draws
its length from `length_for(spec, seed, i, salt)` alone, so every worker split of one run
sends the same lengths (the same reason `shapes.py` draws one global schedule).
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from engine.errors import ConfigError

Kind = Literal["fixed", "uniform", "normal", "histogram"]
_MASK64 = (1 << 64) - 1
_NORMAL_KEYS = ("mean", "stdev", "min", "max")
_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
_HINT = "a length is a number, a range low-high, mean=..,stdev=..[,min=..,max=..] or a file"
# The clipped normal's mean sums the CDF over every integer within this many stdevs (beyond,
# each term is < 1e-23); wider than _EXACT_TERMS integers (stdev > 10,000), the continuous
# closed form, which the rounding moves by < 0.017/stdev tokens (the midpoint rule's error).
_TAIL_STDEVS = 10.0
_EXACT_TERMS = 200_000


@dataclass(frozen=True, slots=True)
class LengthSpec:
    """A distribution of token lengths (always >= 1). Build it with `parse_lengths`."""

    kind: Kind
    text: str  # the spec as given: `str(spec)`, and what a report shows
    low: int  # the smallest length it can draw
    high: int | None  # the largest (None: a normal without max)
    mu: float = 0.0  # normal: before clipping
    sigma: float = 0.0
    lengths: tuple[int, ...] = ()  # histogram: sorted distinct lengths ...
    weights: tuple[float, ...] = ()  # ... and their counts
    _cumulative: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)
    _mean: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived once, here: a spec crosses processes and is drawn from per request.
        cumulative = tuple(np.cumsum(self.weights).tolist()) if self.weights else ()
        object.__setattr__(self, "_cumulative", cumulative)
        object.__setattr__(self, "_mean", self._expected())

    def __str__(self) -> str:
        return self.text

    @property
    def fixed(self) -> int | None:
        """The one length this spec draws, or None when it varies."""
        return self.low if self.high == self.low else None

    @property
    def mean(self) -> float:
        """The expected length: exact for fixed, uniform and histogram; for the clipped,
        rounded normal computed numerically (a sum over the CDF, not a sample)."""
        return self._mean

    def sample(self, rng: np.random.Generator, n: int) -> list[int]:
        """`n` lengths at once (reports, plans); `length_for` is the per-request draw."""
        if self.kind == "fixed":
            return [self.low] * n
        if self.kind == "uniform":
            return rng.integers(self.low, self._top + 1, size=n).tolist()  # type: ignore[no-any-return]
        if self.kind == "normal":
            top = np.inf if self.high is None else self.high
            draws = np.rint(np.clip(rng.normal(self.mu, self.sigma, n), self.low, top))
            return draws.astype(np.int64).tolist()  # type: ignore[no-any-return]
        picks = np.searchsorted(self._cumulative, rng.random(n) * self._cumulative[-1], "right")
        values = np.asarray(self.lengths)[np.minimum(picks, len(self.lengths) - 1)]
        return values.tolist()  # type: ignore[no-any-return]

    def draw(self, rng: random.Random) -> int:
        """One length from a stdlib generator: cheap to seed per request (`length_for`)."""
        if self.kind == "fixed":
            return self.low
        if self.kind == "uniform":
            return rng.randint(self.low, self._top)
        if self.kind == "normal":
            value = max(float(self.low), rng.gauss(self.mu, self.sigma))
            return round(value if self.high is None else min(value, float(self.high)))
        pick = bisect.bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
        return self.lengths[min(pick, len(self.lengths) - 1)]

    def public(self) -> dict[str, Any]:
        """The spec as a report shows it: kind, parameters and the expected mean."""
        data: dict[str, Any] = {"kind": self.kind, "spec": self.text, "mean": self.mean}
        data.update(min=self.low, max=self.high)
        if self.kind == "normal":
            data.update(mu=self.mu, sigma=self.sigma)
        elif self.kind == "histogram":
            data.update(lengths=len(self.lengths), total=self._cumulative[-1])
        return data

    @property
    def _top(self) -> int:
        assert self.high is not None  # noqa: S101 - only the normal has no max
        return self.high

    def _expected(self) -> float:
        if self.kind == "uniform":
            return (self.low + self._top) / 2
        if self.kind == "histogram":
            pairs = zip(self.lengths, self.weights, strict=True)
            return math.fsum(v * w for v, w in pairs) / math.fsum(self.weights)
        if self.kind == "normal":
            return _clipped_normal_mean(self.mu, self.sigma, self.low, self.high)
        return float(self.low)


def _clipped_normal_mean(mu: float, sigma: float, low: int, high: int | None) -> float:
    """E[round(clip(X, low, high))] for X ~ N(mu, sigma): summation by parts gives
    low + sum over k in [low, high) of P(X > k + 1/2)."""
    upper = math.inf if high is None else float(high)
    start = min(max(float(low), math.floor(mu - _TAIL_STDEVS * sigma)), upper)
    end = min(max(start, math.ceil(mu + _TAIL_STDEVS * sigma)), upper)
    if end - start <= _EXACT_TERMS:  # below `start` each term is 1, from `end` on 0
        scale = sigma * math.sqrt(2)
        tail = math.fsum(
            0.5 * math.erfc((k + 0.5 - mu) / scale) for k in range(int(start), int(end))
        )
        return start + tail
    # E[clip(X, low, high)], closed form; the rounding moves it by far less than a token here
    a = (low - mu) / sigma
    b = (upper - mu) / sigma
    cdf_a, cdf_b = _cdf(a), _cdf(b)
    mean = low * cdf_a + mu * (cdf_b - cdf_a) + sigma * (_pdf(a) - _pdf(b))
    return mean + (upper * (1 - cdf_b) if high is not None else 0.0)


def _cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _pdf(z: float) -> float:
    return 0.0 if math.isinf(z) else math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def request_random(seed: int, index: int, salt: int) -> random.Random:
    """The random stream of request `index`'s draw `salt` for a run's `seed`: the same in
    every process and worker split. `salt` keeps a request's draws apart (its input length
    from its output length, its cancellation, ...)."""
    # An injective mix of the three (each taken modulo 2**64): no two draws share a stream.
    return random.Random((seed & _MASK64) << 128 | (salt & _MASK64) << 64 | (index & _MASK64))


def length_for(spec: LengthSpec, seed: int, index: int, salt: int) -> int:
    """Request `index`'s length for a run's `seed` (`request_random`'s stream `salt`)."""
    if spec.low == spec.high:
        return spec.low
    return spec.draw(request_random(seed, index, salt))


def parse_lengths(text: str | int) -> LengthSpec:
    """A `LengthSpec` from its text (module docstring); ConfigError names the bad part."""
    spec = str(text).strip()
    if not spec:
        raise ConfigError(f"empty length spec ({_HINT})")
    if re.fullmatch(r"[+-]?\d+(\.\d*)?", spec):
        value = _whole(spec, "length")
        return LengthSpec("fixed", spec, value, value)
    if match := _RANGE.fullmatch(spec):
        low, high = _whole(match[1], "range low"), _whole(match[2], "range high")
        if high < low:
            raise ConfigError(f"length range {spec!r}: low {low} is above high {high}")
        return LengthSpec("uniform", spec, low, high)
    path = Path(spec)
    if "=" in spec and path.suffix.lower() not in (".json", ".csv"):
        return _parse_normal(spec)
    return _load_histogram(spec, path)


def _whole(raw: str, what: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{what} {raw!r} is not a whole number ({_HINT})") from None
    if value < 1:
        raise ConfigError(f"{what} {raw!r} must be >= 1")
    return value


def _parse_normal(spec: str) -> LengthSpec:
    given: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, raw = (s.strip() for s in part.partition("="))
        if not sep or key not in _NORMAL_KEYS:
            raise ConfigError(
                f"length spec {spec!r}: unknown part {part.strip()!r} (known: "
                + ", ".join(f"{k}=" for k in _NORMAL_KEYS)
                + ")"
            )
        if key in given:
            raise ConfigError(f"length spec {spec!r}: {key} given twice")
        given[key] = raw
    for key in ("mean", "stdev"):
        if key not in given:
            raise ConfigError(f"length spec {spec!r}: a normal needs {key}=")
    mu, sigma = _real(given["mean"], "mean", spec), _real(given["stdev"], "stdev", spec)
    if not sigma > 0:
        raise ConfigError(f"length spec {spec!r}: stdev must be > 0 (a fixed length: a number)")
    low = _whole(given["min"], f"length spec {spec!r}: min") if "min" in given else 1
    high = _whole(given["max"], f"length spec {spec!r}: max") if "max" in given else None
    if high is not None and high < low:
        raise ConfigError(f"length spec {spec!r}: min {low} is above max {high}")
    return LengthSpec("normal", spec, low, high, mu=mu, sigma=sigma)


def _real(raw: str, what: str, spec: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"length spec {spec!r}: {what}={raw!r} is not a number")
    return value


def _load_histogram(spec: str, path: Path) -> LengthSpec:
    """A histogram file: `{"length": count}`, `[[length, count], ...]` or a list of observed
    lengths (.json), or `length,count` rows, a header allowed (.csv or anything else)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigError(f"{spec}: cannot read the length histogram ({reason}; {_HINT})") from None
    rows = _json_rows(spec, raw) if path.suffix.lower() == ".json" else _csv_rows(spec, raw)
    counts: dict[int, float] = {}
    for where, length_raw, count_raw in rows:
        length = _histogram_length(length_raw, f"{where}: length")
        count = _histogram_count(count_raw, f"{where}: count")
        counts[length] = counts.get(length, 0.0) + count
    total = sum(counts.values())
    if not total > 0:
        raise ConfigError(f"{spec}: the histogram is empty (no length with a count above 0)")
    lengths = tuple(sorted(length for length, count in counts.items() if count > 0))
    weights = tuple(counts[length] for length in lengths)
    return LengthSpec("histogram", spec, lengths[0], lengths[-1], lengths=lengths, weights=weights)


Row = tuple[str, object, object]  # where (for errors), length, count


def _json_rows(spec: str, raw: bytes) -> list[Row]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{spec}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg})") from None
    if isinstance(data, dict):
        return [(f"{spec}: key {key!r}", key, count) for key, count in data.items()]
    if not isinstance(data, list):
        raise ConfigError(f"{spec}: a histogram is an object or a list, not {type(data).__name__}")
    rows: list[Row] = []
    for number, item in enumerate(data, 1):
        where = f"{spec}: item {number}"
        if isinstance(item, list) and len(item) == 2:
            rows.append((where, item[0], item[1]))
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            rows.append((where, item, 1))  # an observed length, counted once
        else:
            raise ConfigError(f"{where}: expected [length, count], got {item!r:.60}")
    return rows


def _csv_rows(spec: str, raw: bytes) -> list[Row]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{spec}: not UTF-8 text at byte {exc.start}") from None
    rows: list[Row] = []
    reader = csv.reader(io.StringIO(text))
    first = True
    for raw_cells in reader:
        cells = [cell.strip() for cell in raw_cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        where = f"{spec}:{reader.line_num}"
        if len(cells) != 2:
            raise ConfigError(f"{where}: expected two columns length,count, got {len(cells)}")
        if first and not _is_number(cells[0]):
            first = False
            continue  # the header
        first = False
        rows.append((where, cells[0], cells[1]))
    return rows


def _is_number(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def _histogram_length(raw: object, where: str) -> int:
    value = _number(raw)
    if value is None or not value.is_integer():
        raise ConfigError(f"{where} {raw!r} is not a whole number")
    if value < 1:
        raise ConfigError(f"{where} {raw!r} must be >= 1")
    return int(value)


def _histogram_count(raw: object, where: str) -> float:
    value = _number(raw)
    if value is None or not math.isfinite(value):
        raise ConfigError(f"{where} {raw!r} is not a number")
    if value < 0:
        raise ConfigError(f"{where} {raw!r} is negative")
    return value


def _number(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return None
    return None
