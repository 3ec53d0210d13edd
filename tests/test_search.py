"""SLO search: the bisection on a known threshold, and against a mock of known capacity."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from engine.errors import ConfigError
from engine.loadtest.config import LoadConfig
from engine.loadtest.search import SearchBy, SearchResult, _bisect, run_search
from engine.runtime import loop_factory

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from tests.conftest import MockFactory

# A mock that serves SLOTS generations at once, each TTFT + (TOKENS - 1) x ITL long: its
# capacity is SLOTS / e2e requests per second, or SLOTS users. TTFT within TTFT + 100 ms is
# met until requests queue for a slot, which they do once the load is past the capacity.
SLOTS, TTFT_MS, ITL_MS, TOKENS = 4, 200.0, 10.0, 8
SLO = {"ttft_ms": TTFT_MS + 100}


def searched(coro: Coroutine[Any, Any, SearchResult]) -> SearchResult:
    """On uvloop in this thread: a search on a real mock need not run on both loops."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def bisect(
    by: SearchBy, low: float, high: float, limit: float, budget: int = 20
) -> list[tuple[float, bool]]:
    """`_bisect` against a load that passes up to `limit`; the probes in order."""
    probes: list[tuple[float, bool]] = []

    async def probe(value: float) -> bool | None:
        if len(probes) >= budget:
            return None
        probes.append((value, value <= limit))
        return value <= limit

    middle: Callable[[Any, Any], float] = (
        (lambda lo, hi: (lo + hi) // 2) if by == "concurrency" else (lambda lo, hi: (lo + hi) / 2)
    )
    asyncio.run(_bisect(probe, low, high, middle, by, 0.05))
    return probes


def test_bisection_brackets_the_limit() -> None:
    probes = bisect("rate", 10.0, 100.0, limit=37.0)
    assert probes[:2] == [(100.0, False), (10.0, True)]  # the top, then the bottom
    highest = max(v for v, ok in probes if ok)
    lowest_failing = min(v for v, ok in probes if not ok and v > highest)
    assert highest <= 37.0 < lowest_failing
    assert lowest_failing - highest <= 0.05 * lowest_failing


def test_bisection_doubles_a_passing_top_and_never_probes_the_bottom_again() -> None:
    probes = bisect("concurrency", 1, 4, limit=11)
    assert probes[:3] == [(4, True), (8, True), (16, False)]
    assert 1 not in [v for v, _ in probes]
    assert max(v for v, ok in probes if ok) == 11
    assert min(v for v, ok in probes if not ok) == 12


def test_bisection_stops_when_even_the_bottom_fails_or_the_steps_run_out() -> None:
    assert bisect("rate", 10.0, 100.0, limit=5.0) == [(100.0, False), (10.0, False)]
    assert len(bisect("rate", 10.0, 100.0, limit=37.0, budget=3)) == 3


@pytest.mark.parametrize(
    ("fields", "kwargs", "message"),
    [
        pytest.param({}, {}, "needs objectives", id="no-slo"),
        pytest.param({"slo": SLO, "rate_series": "5:1s"}, {}, "rate series", id="series"),
        pytest.param({"slo": SLO}, {"by": "tokens"}, "'rate' or 'concurrency'", id="by"),
        pytest.param({"slo": SLO}, {"target": 1.5}, "goodput target", id="target"),
        pytest.param({"slo": SLO}, {"step_s": 0}, "steps must be", id="step"),
        pytest.param(
            {"slo": SLO, "canary": False}, {"high": 5.0, "low": 9.0}, "0 < low < high", id="bounds"
        ),
        pytest.param(
            {"slo": SLO, "canary": False},
            {"by": "concurrency", "low": 4, "high": 4},
            "1 <= low < high",
            id="concurrency-bounds",
        ),
    ],
)
def test_bad_searches_are_config_errors(
    fields: dict[str, Any], kwargs: dict[str, Any], message: str
) -> None:
    config = LoadConfig("http://127.0.0.1:1", **fields)
    with pytest.raises(ConfigError, match=message):
        searched(run_search(config, **kwargs))


def mock_config(mock_factory: MockFactory, **fields: Any) -> LoadConfig:
    server = mock_factory(
        ttft_ms=TTFT_MS, itl_ms=ITL_MS, output_tokens=TOKENS, max_concurrency=SLOTS
    )
    return LoadConfig(
        str(server.base_url),
        concurrency=2 * SLOTS,  # the throughput run saturates the mock
        input_tokens=16,
        output_tokens=TOKENS,
        slo=SLO,
        arrival="constant",  # no queue below capacity: the knee is sharp
        warmup_s=0.5,
        grace_s=10.0,
        canary=False,
        workers=1,
        **fields,
    )


def uncontended_e2e_s(search: SearchResult) -> float:
    """What one generation takes on this machine now: the mock's capacity is SLOTS / this."""
    lightest = min((s for s in search.steps if s.passed), key=lambda s: s.value)
    return float(lightest.document["e2e_ms"]["p50"]) / 1000


def test_rate_search_lands_within_one_step_of_the_mocks_capacity(
    mock_factory: MockFactory,
) -> None:
    search = searched(run_search(mock_config(mock_factory), step_s=2.0, tolerance=0.1))
    nominal = SLOTS / ((TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000)  # 14.8 requests/s
    capacity = SLOTS / uncontended_e2e_s(search)
    assert capacity == pytest.approx(nominal, rel=0.3)
    verdict = search.verdict()
    highest, failing = verdict["highest_passing"], verdict["first_failing"]
    assert verdict["resolved"], search.document()["search"]
    assert failing - highest <= 0.1 * failing  # one step
    # Within one step of the capacity: a rate just past it queues too little in a short step
    # to fail, a rate a step below it may fail on a busy machine's late timers.
    assert capacity * 0.9 <= failing
    assert highest <= capacity * 1.1
    doc = search.document()
    assert doc["kind"] == "search"
    assert doc["runs"][0]["label"] == "throughput"
    assert len(doc["runs"]) == len(search.steps) + 1 == len(search.results)
    assert doc["search"]["throughput"] == doc["runs"][0]["request_throughput"]
    steps = doc["search"]["steps"]
    assert [s["rate"] for s in steps] == [s.value for s in search.steps]
    assert all(s["passed"] == (s["goodput_fraction"] >= 0.9) for s in steps)
    assert doc["runs"][steps[0]["run"]]["mode"] == "open"


def test_concurrency_search_finds_the_mocks_slots(mock_factory: MockFactory) -> None:
    search = searched(run_search(mock_config(mock_factory), by="concurrency", step_s=2.0))
    verdict = search.verdict()
    # SLOTS users never queue; one more queues each for a fraction of a generation, which
    # may still be within the SLO's 100 ms; two more queue past it.
    assert verdict["highest_passing"] in (SLOTS, SLOTS + 1), search.document()["search"]
    assert verdict["first_failing"] == verdict["highest_passing"] + 1
    assert search.throughput is None
    assert {doc["mode"] for doc in search.documents} == {"closed"}
