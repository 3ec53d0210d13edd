"""SLO search: the highest load whose goodput still meets the SLO, found by bisection.

A step is one short load (`run_load`), judged on its result document as every report
judges it (`summarize`'s goodput): it passes when the share of its measured requests that
met every objective (the goodput fraction; a failed request meets none) is at least
`target`, and no more than `max_failed` of them failed outright. The target is 0.9 by
default: DistServe's definition of goodput, the one vLLM's `--goodput` took up, is the
highest rate at which 90 % of requests meet the SLO; GuideLLM's goodput search likewise
judges each level on this attainment, not on the goodput rate, because a ratio does not
depend on how much of a short window the server spent filling up. The failure cap keeps a
server that sheds load with fast 429s from passing on the requests it chose to serve.

By rate (open loop, the default): a closed loop at `config.concurrency` measures the
saturated throughput, as a sweep's second segment does, and the search starts there.
That throughput is probed first; if it passes (the closed loop did not saturate the
server), the bound doubles until a rate fails. Then the low bound (a tenth of the
throughput unless given) is probed, and the bracket between the highest passing and the
lowest failing rate is halved until it is narrower than `tolerance` of its top or the
steps run out. Above capacity an open loop's queue grows for the whole step and its TTFT
with it, so a rate a few percent over capacity fails within a 10 s step. By concurrency
(closed loop), the same with whole numbers of users, from 1 to `config.concurrency`,
until the bracket is one user wide.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from engine.errors import ConfigError
from engine.loadtest.interrupts import Interrupted, Stop
from engine.loadtest.result import sweep_document
from engine.loadtest.workers import run_load, start_canary

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from engine.loadtest.config import LoadConfig
    from engine.loadtest.result import BenchResult
    from engine.loadtest.runner import Progress

SearchBy = Literal["rate", "concurrency"]
TARGET_FRACTION = 0.9  # DistServe's goodput: 90 % of requests within the SLO
MAX_FAILED_SHARE = 0.01  # and at most 1 % failed outright
STEP_S = 10.0  # each step's measured window
MAX_STEPS = 8  # probes after the throughput: from 1/10 to 1/1 at 5 %, with both ends
TOLERANCE = 0.05  # rate: stop once the bracket is narrower than this share of its top
LOW_SHARE = 0.1  # rate: the default low bound, as a share of the saturated throughput


@dataclass(slots=True)
class SearchStep:
    """One probe: the load it ran at, its result, its document, and the judgement."""

    value: float  # requests per second, or users
    result: BenchResult
    document: dict[str, Any]
    goodput_fraction: float
    failed_share: float
    passed: bool

    @classmethod
    def judge(
        cls, value: float, result: BenchResult, target: float, max_failed: float
    ) -> SearchStep:
        doc = result.summary()
        fraction = float((doc["goodput"] or {}).get("fraction", 0.0))
        done = doc["completed"] + doc["failed"]
        failed = doc["failed"] / done if done else 0.0
        passed = done > 0 and fraction >= target and failed <= max_failed
        return cls(value, result, doc, fraction, failed, passed)


@dataclass(slots=True)
class SearchResult:
    """Every step in the order run and the verdict they give."""

    by: SearchBy
    slo: dict[str, float]
    target: float
    max_failed: float
    tolerance: float
    throughput: BenchResult | None = None  # by rate: the saturated closed loop
    throughput_document: dict[str, Any] | None = None
    steps: list[SearchStep] = field(default_factory=list)

    @property
    def results(self) -> list[BenchResult]:
        """Every run's result in order (the throughput first), as a sweep lists them."""
        head = [] if self.throughput is None else [self.throughput]
        return head + [step.result for step in self.steps]

    @property
    def documents(self) -> list[dict[str, Any]]:
        head = [] if self.throughput_document is None else [self.throughput_document]
        return head + [step.document for step in self.steps]

    @property
    def highest_passing(self) -> SearchStep | None:
        return max((s for s in self.steps if s.passed), key=lambda s: s.value, default=None)

    @property
    def first_failing(self) -> SearchStep | None:
        """The lowest failing step above the highest passing one."""
        best = self.highest_passing
        floor = -math.inf if best is None else best.value
        failing = (s for s in self.steps if not s.passed and s.value > floor)
        return min(failing, key=lambda s: s.value, default=None)

    def verdict(self) -> dict[str, Any]:
        best, worst = self.highest_passing, self.first_failing
        if best is None and worst is None:
            note = "nothing was measured"
        elif best is None:
            assert worst is not None  # noqa: S101 - the case above
            note = f"no {self.by} tried met the SLO; the lowest, {worst.value:g}, missed it"
        elif worst is None:
            note = f"every {self.by} tried met the SLO, up to {best.value:g}: the limit is above"
        else:
            note = f"{best.value:g} meets the SLO, {worst.value:g} does not"
        return {
            "by": self.by,
            "highest_passing": None if best is None else best.value,
            "first_failing": None if worst is None else worst.value,
            "resolved": best is not None
            and worst is not None
            and _close(self.by, best.value, worst.value, self.tolerance),
            "goodput_request_rate": None
            if best is None
            else best.document["goodput"]["request_rate"],
            "note": note,
        }

    def document(self) -> dict[str, Any]:
        """The search's JSON: a sweep document of every run (so the sweep views read it),
        with the steps' judgements and the verdict."""
        offset = 0 if self.throughput_document is None else 1
        doc = sweep_document(self.documents)
        doc["kind"] = "search"
        doc["search"] = {
            "by": self.by,
            "slo": dict(self.slo),
            "target_fraction": self.target,
            "max_failed_share": self.max_failed,
            "tolerance": self.tolerance,
            "throughput": None
            if self.throughput_document is None
            else self.throughput_document["request_throughput"],
            "steps": [
                {
                    "run": offset + i,
                    "label": step.document["label"],
                    self.by: step.value,
                    "goodput_fraction": step.goodput_fraction,
                    "failed_share": step.failed_share,
                    "passed": step.passed,
                }
                for i, step in enumerate(self.steps)
            ],
            "verdict": self.verdict(),
        }
        return doc


def _close(by: SearchBy, low: float, high: float, tolerance: float) -> bool:
    return high - low <= 1 if by == "concurrency" else high - low <= tolerance * high


def _check(
    config: LoadConfig,
    by: str,
    step_s: float,
    max_steps: int,
    tolerance: float,
    target: float,
    max_failed: float,
) -> None:
    if not config.slo:
        raise ConfigError("an SLO search needs objectives (--slo), e.g. ttft_ms=500")
    if config.rate_series or config.trace_file:
        raise ConfigError("an SLO search sets its own loads: drop the rate series or trace")
    if by not in ("rate", "concurrency"):
        raise ConfigError("search by 'rate' or 'concurrency'")
    if not (step_s > 0 and max_steps >= 1 and tolerance > 0):
        raise ConfigError("search steps must be > 0 s, at least 1, and the tolerance > 0")
    if not (0 < target <= 1 and 0 <= max_failed < 1):
        raise ConfigError("the goodput target must be within (0, 1], the failure cap [0, 1)")


async def run_search(
    config: LoadConfig,
    progress: Progress | None = None,
    stop: Stop | None = None,
    *,
    by: SearchBy = "rate",
    low: float | None = None,
    high: float | None = None,
    step_s: float = STEP_S,
    max_steps: int = MAX_STEPS,
    tolerance: float = TOLERANCE,
    target: float = TARGET_FRACTION,
    max_failed: float = MAX_FAILED_SHARE,
) -> SearchResult:
    """Search the highest rate (or concurrency) whose steps meet `config.slo`; `low` and
    `high` bound it (by rate, `high` given skips the throughput run). A stop ends it after
    the step it came in: the steps run so far are kept."""
    _check(config, by, step_s, max_steps, tolerance, target, max_failed)
    stop = stop or Stop()
    search = SearchResult(by, dict(config.slo), target, max_failed, tolerance)
    base = config.with_(requests=None, duration_s=step_s, sweep_steps=0)
    halted = False

    async def probe(value: float) -> bool | None:
        """Run one step; None: the search stops (a stop came, or the steps ran out)."""
        nonlocal halted
        if halted or len(search.steps) >= max_steps:
            return None
        if by == "rate":
            segment = base.with_(rate=value, label=f"rate {value:.2f}/s")
        else:
            segment = base.with_(rate=None, concurrency=int(value), label=f"concurrency {value}")
        try:
            result = await run_load(segment, progress, url, stop)
        except Interrupted:  # in the step's priming: the steps before it are kept
            if not search.results:
                raise
            halted = True
            return None
        search.steps.append(SearchStep.judge(value, result, target, max_failed))
        halted = result.halt is not None
        return None if halted else search.steps[-1].passed

    async with contextlib.AsyncExitStack() as stack:
        url = await start_canary(stack) if config.canary else None  # one for every step
        if by == "concurrency":
            bottom = int(low) if low is not None else 1
            top = int(high) if high is not None else max(2, config.concurrency)
            if not 1 <= bottom < top:
                raise ConfigError("a concurrency search needs 1 <= low < high")
            await _bisect(probe, bottom, top, lambda lo, hi: (lo + hi) // 2, by, tolerance)
            return search
        if high is None:
            saturated = config.with_(
                rate=None, requests=None, duration_s=step_s, sweep_steps=0, label="throughput"
            )
            search.throughput = await run_load(saturated, progress, url, stop)
            search.throughput_document = search.throughput.summary()
            high = float(search.throughput_document["request_throughput"])
            if search.throughput.halt is not None or high <= 0:
                return search  # stopped, or nothing completed: no rate to start from
        low = LOW_SHARE * high if low is None else low
        if not 0 < low < high:
            raise ConfigError("a rate search needs 0 < low < high")
        await _bisect(probe, low, high, lambda lo, hi: (lo + hi) / 2, by, tolerance)
    return search


async def _bisect(
    probe: Callable[[float], Awaitable[bool | None]],
    low: float,
    high: float,
    middle: Callable[[Any, Any], float],
    by: SearchBy,
    tolerance: float,
) -> None:
    """The top first, doubled while it passes; then the bottom, unless a top passed; then
    halve the bracket between the highest pass and the lowest failure until it is close."""
    passed = await probe(high)
    low_known = False
    while passed:
        low, low_known = high, True
        high *= 2
        passed = await probe(high)
    if passed is None:
        return
    if not low_known and not await probe(low):
        return  # even the bottom misses the SLO (or the search stopped)
    while not _close(by, low, high, tolerance):
        mid = middle(low, high)
        passed = await probe(mid)
        if passed is None:
            return
        low, high = (mid, high) if passed else (low, mid)
