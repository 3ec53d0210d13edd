"""Bench results side by side, each change judged against the runs' own noise: the figures,
their noise, the judgement and the comparison's JSON document (docs/compare.md). Shown by
engine/report/compare.py; `stream-engine compare` is engine/cli/compare.py.

A change counts only when it is larger than what re-measuring the same load could give: each
latency percentile gets a 95 % bootstrap interval from its run's per-request values (the
document's `samples`), rates and the failed fraction one from their counts, and a change is
*significant* when the baseline's and the candidate's intervals do not overlap. Overlap of two
95 % intervals is the conservative test (for equal widths about a 0.6 % false-alarm rate
rather than 5 %): the per-run bootstrap sees only sampling noise, not the drift between two
runs on a shared machine, so a CI gate built on it should lean towards not crying wolf. A
*regression* is a significant change for the worse by more than `--threshold` percent; any
regression makes the exit code 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson

from engine.errors import ConfigError
from engine.loadtest.metrics import PERCENTILES
from engine.loadtest.outputs import RUN_FILES
from engine.loadtest.result import SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Sequence

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 0  # fixed: the same documents always give the same intervals and exit code
DEFAULT_THRESHOLD_PCT = 10.0
EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2
MIN_TAIL = 5  # values beyond a percentile that its bootstrap needs (see `needed`)
CHUNK_VALUES = 2_000_000  # resampled values held at once (16 MB), whatever the run's size
REQUIRED_KEYS = (
    "completed",
    "failed",
    "duration_s",
    "request_throughput",
    "output_token_throughput",
    "output_tokens",
    "ttft_ms",
    "e2e_ms",
)
TOOL = "stream-engine bench"

Kind = Literal["latency", "throughput", "fraction"]
Noise = Literal["bootstrap", "poisson", "binomial", "none"]


class CompareInputError(ConfigError):
    """A file that cannot be compared: missing, not JSON, not a bench document, wrong shape
    (the caller's input, hence a `ConfigError`)."""


@dataclass(frozen=True, slots=True)
class Metric:
    """One compared figure: where it lives in a document and where its noise comes from."""

    name: str
    key: str  # top-level document key (also the `samples` list a percentile is resampled from)
    stat: str | None  # "p50", ... of a stats object; None for a scalar figure
    kind: Kind  # latency: higher is worse; throughput: lower is worse; fraction: not gated
    unit: str
    noise: Noise
    note: str = ""  # said once under the table

    @property
    def ident(self) -> str:
        return f"{self.key}.{self.stat}" if self.stat else self.key

    @property
    def noise_from(self) -> str:
        return {
            "bootstrap": f"bootstrap of samples.{self.key}",
            "poisson": "Poisson resampling of the request count",
            "binomial": "binomial resampling of the failed count",
            "none": "none",
        }[self.noise]


def _latency(
    name: str, key: str, stats: Sequence[str], noise: Noise = "bootstrap", note: str = ""
) -> list[Metric]:
    return [Metric(f"{name} {stat}", key, stat, "latency", "ms", noise, note) for stat in stats]


ITL_NOTE = (
    "ITL has no noise estimate: its percentiles are over every gap of every request, "
    "which the document does not keep (and one request's gaps are not independent "
    "draws); TPOT, each request's mean gap, carries the decode-speed check"
)
METRICS: tuple[Metric, ...] = (
    *_latency("TTFT", "ttft_ms", ("p50", "p90", "p99")),
    *_latency("TTFT to text", "ttft_text_ms", ("p50", "p99")),
    *_latency("ITL", "itl_ms", ("p50", "p99"), "none", ITL_NOTE),
    *_latency("TPOT", "tpot_ms", ("p50", "p99")),
    *_latency("E2E", "e2e_ms", ("p50", "p99")),
    Metric("throughput", "request_throughput", None, "throughput", "req/s", "poisson"),
    Metric("output throughput", "output_token_throughput", None, "throughput", "tok/s", "poisson"),
    Metric("failed", "failed_fraction", None, "fraction", "%", "binomial"),
    Metric("goodput", "goodput", None, "throughput", "req/s", "poisson"),
)


def needed(stat: str) -> int:
    """Completed requests a percentile's bootstrap needs: at least MIN_TAIL values beyond it
    (p50: 10, p90: 50, p99: 500). With fewer, the resamples keep drawing the same top few
    values and the interval comes out far narrower than the real noise."""
    return math.ceil(round(MIN_TAIL * 100 / (100 - PERCENTILES[stat]), 6))


@dataclass(slots=True)
class Cell:
    """One run's figure for one metric, and its change against the baseline."""

    value: float | None
    interval: tuple[float, float] | None  # None: no noise estimate (no samples, no values)
    change_pct: float | None = None  # relative to the baseline; None for the baseline itself
    change_abs: float | None = None
    significant: bool | None = None  # None: not judged (no interval on one side)
    regression: bool = False


def _round(value: float | None) -> float | None:
    """JSON figures at the documents' own precision (stats keep 4 decimals)."""
    return None if value is None else round(value, 4)


@dataclass(slots=True)
class Row:
    metric: Metric
    cells: list[Cell]
    note: str = ""


@dataclass(slots=True)
class Comparison:
    """All runs at one position (a sweep has one comparison per step)."""

    position: int
    labels: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Report:
    files: list[str]  # the documents read, baseline first
    threshold_pct: float
    comparisons: list[Comparison]
    notes: list[str]
    sweep: bool = False
    names: list[str] = field(default_factory=list)  # each run's name (`run_names`)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [Path(f).name for f in self.files]

    @property
    def regressions(self) -> list[dict[str, Any]]:
        return [
            {
                "position": comp.position,
                "run": self.files[i],
                "run_name": self.names[i],
                "metric": row.metric.ident,
                "name": row.metric.name,
                "change_pct": _round(cell.change_pct),
            }
            for comp in self.comparisons
            for row in comp.rows
            for i, cell in enumerate(row.cells)
            if cell.regression
        ]

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSION if self.regressions else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        """The comparison for CI (`--json`)."""
        return {
            "tool": "stream-engine compare",
            "baseline": self.files[0],
            "files": self.files,
            "names": self.names,
            "kind": "sweep" if self.sweep else "single",
            "threshold_pct": self.threshold_pct,
            "noise": {
                "confidence": CONFIDENCE,
                "resamples": RESAMPLES,
                "seed": SEED,
                "min_tail": MIN_TAIL,
                "rule": "significant when the baseline's and the candidate's "
                "intervals do not overlap",
            },
            "comparisons": [
                {
                    "position": comp.position,
                    "labels": comp.labels,
                    "notes": comp.notes,
                    "metrics": [
                        {
                            "metric": row.metric.ident,
                            "name": row.metric.name,
                            "kind": row.metric.kind,
                            "unit": row.metric.unit,
                            "noise_from": row.metric.noise_from,
                            "note": row.note,
                            "values": [_round(c.value) for c in row.cells],
                            "intervals": [
                                [_round(x) for x in c.interval] if c.interval else None
                                for c in row.cells
                            ],
                            "change_pct": [_round(c.change_pct) for c in row.cells],
                            "change_abs": [_round(c.change_abs) for c in row.cells],
                            "significant": [c.significant for c in row.cells],
                            "regression": [c.regression for c in row.cells],
                        }
                        for row in comp.rows
                    ],
                }
                for comp in self.comparisons
            ],
            "notes": self.notes,
            "regressions": self.regressions,
            "exit_code": self.exit_code,
        }


# -- noise -------------------------------------------------------------------------------------


def bootstrap_percentiles(
    values: Sequence[float] | np.ndarray,
    stats: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> np.ndarray:
    """The percentiles `stats` ("p50", ...) of `resamples` resamples with replacement, computed
    like `metrics.stats` (numpy, linear): shape (len(stats), resamples). Chunked so that a
    long run's bootstrap never holds more than CHUNK_VALUES values at once."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no values to resample")
    qs = [PERCENTILES[stat] for stat in stats]
    rng = np.random.default_rng(seed)
    out = np.empty((len(qs), resamples))
    step = max(1, CHUNK_VALUES // arr.size)
    for start in range(0, resamples, step):
        stop = min(start + step, resamples)
        picks = arr[rng.integers(0, arr.size, size=(stop - start, arr.size))]
        out[:, start:stop] = np.percentile(picks, qs, axis=1)
    return out


def interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap draws (percentile method)."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def _count_interval(count: int, scale: float) -> tuple[float, float]:
    """A rate's interval from its count alone (Poisson): per-request noise is not in the
    document for throughput, and in a closed loop this overstates the noise (conservative)."""
    return interval(_rng().poisson(count, RESAMPLES) * scale)


def _fraction_interval(hits: int, total: int) -> tuple[float, float]:
    """Resampling the requests' ok/failed outcomes is a binomial draw of the failed count."""
    return interval(_rng().binomial(total, hits / total, RESAMPLES) / total * 100)


# -- one document ------------------------------------------------------------------------------


class RunFigures:
    """One run's values and noise intervals; each metric's bootstrap is computed once."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.samples: dict[str, list[float]] | None = doc.get("samples")
        self._draws: dict[str, dict[str, tuple[float, float]]] = {}

    def value(self, metric: Metric) -> float | None:
        doc = self.doc
        if metric.key == "failed_fraction":
            total = doc["completed"] + doc["failed"]
            return 100 * doc["failed"] / total if total else None
        if metric.key == "goodput":
            good = doc.get("goodput")
            return None if good is None else float(good["request_rate"])
        figure = doc.get(metric.key)
        if metric.stat is not None:
            figure = (figure or {}).get(metric.stat)
        return None if figure is None else float(figure)

    def count(self, metric: Metric) -> int | None:
        """How many per-request values the metric's bootstrap has (None: no samples)."""
        return None if self.samples is None else len(self.samples.get(metric.key) or [])

    def interval(self, metric: Metric) -> tuple[float, float] | None:
        doc = self.doc
        duration = float(doc["duration_s"])
        completed = int(doc["completed"])
        match metric.noise, metric.key:
            case "bootstrap", _:
                return self._percentile_interval(metric)
            case "binomial", _:
                total = completed + int(doc["failed"])
                return _fraction_interval(int(doc["failed"]), total) if total else None
            case "poisson", "goodput":
                good = doc.get("goodput")
                return (
                    None if good is None else _count_interval(int(good["requests"]), 1 / duration)
                )
            case "poisson", "request_throughput":
                return _count_interval(completed, 1 / duration)
            case "poisson", _:  # tokens per request held at the run's mean: the count is noise
                per_request = doc["output_tokens"] / completed if completed else 0.0
                return _count_interval(completed, per_request / duration)
        return None

    def _percentile_interval(self, metric: Metric) -> tuple[float, float] | None:
        if self.samples is None or metric.stat is None:
            return None
        if metric.key not in self._draws:
            values = self.samples.get(metric.key) or []
            stats = sorted(
                {
                    m.stat
                    for m in METRICS
                    if m.key == metric.key and m.stat and len(values) >= needed(m.stat)
                }
            )
            self._draws[metric.key] = (
                {}
                if not stats
                else dict(
                    zip(stats, map(interval, bootstrap_percentiles(values, stats)), strict=True)
                )
            )
        return self._draws[metric.key].get(metric.stat)


def _judge(metric: Metric, base: Cell, cell: Cell, threshold_pct: float) -> None:
    """Fill the candidate cell's change, significance and regression against the baseline."""
    if base.value is None or cell.value is None:
        return
    cell.change_abs = cell.value - base.value
    if base.value:
        cell.change_pct = 100 * cell.change_abs / abs(base.value)
    elif not cell.value:
        cell.change_pct = 0.0
    if base.interval is None or cell.interval is None:
        return
    cell.significant = not overlap(base.interval, cell.interval)
    if cell.significant and cell.change_pct is not None:
        worse = {"latency": cell.change_pct, "throughput": -cell.change_pct}.get(metric.kind)
        cell.regression = worse is not None and worse > threshold_pct


def compare_runs(
    docs: Sequence[dict[str, Any]], threshold_pct: float = DEFAULT_THRESHOLD_PCT, position: int = 0
) -> Comparison:
    """One comparison of single-run documents: the first is the baseline."""
    runs = [RunFigures(doc) for doc in docs]
    slos = [(doc.get("goodput") or {}).get("slo") for doc in docs]
    comp = Comparison(
        position=position, labels=[str(doc.get("label") or "") for doc in docs], rows=[]
    )
    for metric in METRICS:
        if metric.key == "goodput" and all(slo is None for slo in slos):
            continue
        cells = [Cell(run.value(metric), run.interval(metric)) for run in runs]
        row = Row(metric, cells)
        if metric.key == "goodput" and any(slo != slos[0] for slo in slos):
            row.note = "the runs' --slo differ: goodput is not comparable, not judged"
            for cell in cells:
                cell.interval = None
        counts = [run.count(metric) for run in runs]
        if (
            metric.noise == "bootstrap"
            and metric.stat
            and any(
                n is not None and n < needed(metric.stat) and cell.value is not None
                for n, cell in zip(counts, cells, strict=True)
            )
        ):
            have = ", ".join("-" if n is None else str(n) for n in counts)
            row.note = (
                f"too few requests for a noise estimate (needs {needed(metric.stat)} "
                f"completed; the runs have {have})"
            )
        for cell in cells[1:]:
            _judge(metric, cells[0], cell, threshold_pct)
        comp.rows.append(row)
    return comp


# -- input -------------------------------------------------------------------------------------


def _check_run(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("tool") != TOOL:
        raise CompareInputError(f"{where}: not a `{TOOL}` result document")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CompareInputError(
            f"{where}: schema_version {version!r}; this version of compare reads {SCHEMA_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in doc]
    if missing:
        raise CompareInputError(
            f"{where}: not a single-run bench document (missing {', '.join(missing)})"
        )
    numbers = [doc[key] for key in REQUIRED_KEYS if not key.endswith("_ms")]
    if (
        not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers)
        or doc["duration_s"] <= 0
        or not all(isinstance(doc.get(m.key, {}), dict) for m in METRICS if m.stat)
        or not isinstance(doc.get("samples", {}), dict)
    ):
        raise CompareInputError(f"{where}: a malformed bench document (a figure of the wrong type)")
    return doc


def document_path(path: str | Path) -> Path:
    """The result document of `path`: the file itself, or a run folder's result.json."""
    path = Path(path)
    if path.is_dir():
        document = path / RUN_FILES["json"]
        if not document.is_file():
            raise CompareInputError(
                f"{path}: a folder without {RUN_FILES['json']} (not a run folder)"
            )
        return document
    return path


def load(path: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """A document's runs (one, or a sweep's in order) and whether it was a sweep; `path` is
    a result file or the run folder `stream-engine bench` printed."""
    path = document_path(path)
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise CompareInputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except orjson.JSONDecodeError as exc:
        raise CompareInputError(f"{path}: not JSON ({exc})") from exc
    if isinstance(doc, dict) and doc.get("kind") == "sweep" and doc.get("tool") == TOOL:
        runs = doc.get("runs")
        if not isinstance(runs, list) or not runs:
            raise CompareInputError(f"{path}: a sweep document without runs")
        return [_check_run(run, f"{path} (sweep run {i + 1})") for i, run in enumerate(runs)], True
    return [_check_run(doc, str(path))], False


def run_names(paths: Sequence[str], runs: Sequence[Sequence[dict[str, Any]]]) -> list[str]:
    """What to call each run: its `--label`, else its run folder's name (the time and the
    mode), else its file name; the path as given where those clash."""

    def name(path: str, docs: Sequence[dict[str, Any]]) -> str:
        label = str(docs[0].get("label") or "") if len(docs) == 1 else ""
        document = document_path(path)
        folder = document.parent.name if document.name == RUN_FILES["json"] else ""
        return label or folder or document.name

    names = [name(path, docs) for path, docs in zip(paths, runs, strict=True)]
    clash = {n for n in names if names.count(n) > 1}
    return [path if n in clash else n for path, n in zip(paths, names, strict=True)]


def compare_files(paths: Sequence[str], threshold_pct: float = DEFAULT_THRESHOLD_PCT) -> Report:
    """Load and compare; raises CompareInputError on anything that is not comparable."""
    if len(paths) < 2:
        raise CompareInputError("give at least two documents: the baseline, then candidates")
    loaded = [load(path) for path in paths]
    sweeps = {sweep for _, sweep in loaded}
    if len(sweeps) > 1:
        kinds = ", ".join(
            f"{p} ({'sweep' if s else 'single run'})"
            for p, (_, s) in zip(paths, loaded, strict=True)
        )
        raise CompareInputError(f"cannot compare a sweep with a single run: {kinds}")
    sweep = sweeps.pop()
    lengths = {len(runs) for runs, _ in loaded}
    if len(lengths) > 1:
        counts = ", ".join(f"{p}: {len(r)} runs" for p, (r, _) in zip(paths, loaded, strict=True))
        raise CompareInputError(
            f"sweeps are compared step by step, and their steps differ ({counts})"
        )
    comparisons = [
        compare_runs([runs[i] for runs, _ in loaded], threshold_pct, i)
        for i in range(lengths.pop())
    ]
    for comp in comparisons:
        if sweep and len(set(comp.labels)) > 1:
            comp.notes.append(
                f"the steps differ ({' / '.join(comp.labels)}): a sweep's rates "
                "come from its own measured saturation, so this is not the "
                "same load"
            )
    notes = [
        f"{path}: no per-request samples (an older document): its latency percentiles "
        "are compared without a noise estimate and cannot fail the check"
        for path, (runs, _) in zip(paths, loaded, strict=True)
        if any("samples" not in run for run in runs)
    ]
    notes += list(dict.fromkeys(m.note for m in METRICS if m.note))
    names = run_names(paths, [runs for runs, _ in loaded])
    return Report(list(paths), threshold_pct, comparisons, notes, sweep, names)
