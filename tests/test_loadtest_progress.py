"""bench's live display (engine/report/progress.py) on snapshots made by hand and a clock
that moves only when told: the phases, the bar's total, the ETA, the failures, and the
plain lines a log gets (issue 25: `16.0 s done 333` with no total, `done 125` for
`--requests 150`, `0.0 s done 0` while the mock started and the warm-up ran)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from engine.report.progress import LiveProgress, LoadProgress, LogProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def snap(phase: str, worker: int = 0, **fields: Any) -> dict[str, Any]:
    """One worker's snapshot (the keys `Runner.snapshot` sends) of a 10 s, 16-user load."""
    base: dict[str, Any] = {
        "worker": worker,
        "label": "",
        "phase": phase,
        "elapsed_s": 0.0,
        "done": 0,
        "failed": 0,
        "warmup_done": 0,
        "inflight": 16,
        "primed": 0,
        "priming": 16,
        "ttft_p50_ms": None,
        "requests": None,
        "duration_s": 10.0,
        "warmup_s": 1.0,
        "grace_s": 30.0,
    }
    return base | fields


def test_a_stage_shows_until_the_workers_report() -> None:
    clock = Clock()
    progress = LoadProgress(clock=clock)
    progress.stage("starting the mock endpoint")
    clock.now += 1.5
    view = progress.view()
    assert (view.phase, view.total, view.stage_s) == ("starting the mock endpoint", None, 1.5)
    progress.update(snap("priming", primed=4))
    view = progress.view()
    assert (view.phase, view.amount, view.percent) == (
        "opening connections",
        "4/16 connections",
        25,
    )


def test_warm_up_then_measuring_by_time_with_a_bar_and_an_eta() -> None:
    clock = Clock()
    progress = LoadProgress(clock=clock)
    progress.update(snap("warm-up", elapsed_s=-0.4, warmup_done=5))
    view = progress.view()
    assert view.line() == (
        "bench: warm-up  0.6/1 s  60%  ETA 0 s  5 requests done (not measured)  in flight 16"
    )
    progress.update(snap("measuring", elapsed_s=6.0, done=110, failed=3, ttft_p50_ms=201.4))
    clock.now += 0.5  # the clock runs on between snapshots
    view = progress.view()
    assert (view.amount, view.percent, view.eta_s, view.failed) == ("6.5/10 s", 65, 3.5, 3)
    assert view.counts == "done 110  failed 3  in flight 16  16.9 req/s  TTFT p50 201.4 ms"


def test_measuring_by_count_has_its_total_and_ends_on_the_final_counts() -> None:
    clock = Clock()
    progress = LoadProgress(clock=clock)
    load = {"requests": 150, "duration_s": None}
    progress.update(snap("measuring", elapsed_s=5.0, done=75, **load))
    view = progress.view()
    assert (view.amount, view.percent, view.eta_s) == ("75/150 requests", 50, 5.0)
    progress.update(snap("draining", elapsed_s=9.0, done=134, inflight=16, **load))
    assert progress.view().amount == "16 in flight (--grace 30 s)"
    progress.update(snap("done", elapsed_s=10.2, done=150, inflight=0, **load))
    view = progress.view()
    assert (view.phase, view.measured) == ("done", 150)  # never the stale `done 125`
    assert view.counts.startswith("done 150  failed 0  in flight 0")


def test_workers_are_summed_and_the_slowest_sets_the_phase() -> None:
    progress = LoadProgress(clock=Clock())
    progress.update(snap("measuring", worker=0, elapsed_s=10.0, done=100, inflight=0))
    progress.update(snap("draining", worker=1, elapsed_s=10.0, done=90, inflight=8))
    assert progress.view().phase == "measuring"
    progress.update(snap("done", worker=0, elapsed_s=10.5, done=108, inflight=0))
    progress.update(snap("done", worker=1, elapsed_s=10.6, done=98, inflight=0))
    view = progress.view()
    assert (view.phase, view.measured) == ("done", 206)
    # a sweep's next step starts over: its title says which, the last step's counts are gone
    progress.update(snap("priming", worker=1, label="rate 5.00/s", primed=2, priming=8))
    view = progress.view()
    assert (view.title, view.amount) == ("bench rate 5.00/s", "2/8 connections")


def test_a_log_gets_a_line_per_phase_and_one_every_5_s_while_measuring() -> None:
    clock = Clock()
    out = io.StringIO()
    log = LogProgress(Console(file=out, width=300), clock=clock)
    log.stage("starting the mock endpoint")
    log.update(snap("priming"))
    log.update(snap("priming", primed=16))  # the same phase: no second line
    log.update(snap("warm-up", elapsed_s=-0.5))
    log.update(snap("measuring", elapsed_s=0.5))  # nothing measured yet: no line
    log.update(snap("measuring", elapsed_s=1.0, done=4))
    for second in (2, 3, 4, 5):
        clock.now += 1
        log.update(snap("measuring", elapsed_s=float(second), done=4 * second))
    clock.now += 1.5
    log.update(snap("measuring", elapsed_s=6.5, done=26))
    log.update(snap("draining", elapsed_s=10.0, done=40))
    log.update(snap("done", elapsed_s=10.7, done=56, inflight=0))
    lines = ["  ".join(line.split("  ")[:2]) for line in out.getvalue().splitlines()]
    assert lines == [
        "bench: starting the mock endpoint",
        "bench: opening connections  0/16 connections",
        "bench: warm-up  0.5/1 s",
        "bench: measuring  1.0/10 s",
        "bench: measuring  6.5/10 s",
        "bench: draining  16 in flight (--grace 30 s)",
        "bench: done  10.7 s measured",
    ]
    assert "done 56  failed 0  in flight 0" in out.getvalue().splitlines()[-1]


@pytest.mark.parametrize("failed", [0, 3])
def test_the_terminal_view_draws_a_bar_the_amount_and_the_eta(failed: int) -> None:
    clock = Clock()
    out = io.StringIO()
    console = Console(file=out, width=140, force_terminal=True, color_system="truecolor")
    live = LiveProgress(console, clock=clock)
    live.update(snap("measuring", elapsed_s=6.0, done=110, failed=failed))
    console.print(live)
    text = out.getvalue()
    assert "bench · measuring" in text
    assert "6.0/10 s" in text
    assert " 60%" in text
    assert "ETA 4 s" in text
    assert "━" in text  # the bar
    assert ("\x1b[31m" in text) is bool(failed)  # failures so far, in red
