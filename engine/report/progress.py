"""bench's live display: which phase the load is in, how far it has come, what it has seen.

The command says its own stages (starting the mock endpoint, the load's processes); then the
workers' snapshots (`Runner.snapshot`, every 0.5 s and at each phase's end) say the rest:
opening connections, warm-up, measuring, draining, done. `LoadProgress` reads them as one
`View` (pure: tested without a terminal). On a terminal `LiveProgress` draws it in place with
rich (a bar, done/total or elapsed/duration, the ETA, failures so far); in a log
`LogProgress` prints a plain line at each phase change and every LOG_EVERY_S while
measuring, the lines a script (or a test) waits on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from engine.loadtest.runner import PHASES

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

__all__ = ["LOG_EVERY_S", "LiveProgress", "LoadProgress", "LogProgress", "View"]

LOG_EVERY_S = 5.0  # the line's period while measuring, when stderr is a log
WORDS = {"priming": "opening connections", "warm-up": "warm-up", "measuring": "measuring"}


@dataclass(frozen=True, slots=True)
class View:
    """What the display shows at one moment."""

    title: str  # "bench", or "bench sync" for a sweep's step
    phase: str  # in words: "starting the mock endpoint", "warm-up", "measuring", ...
    amount: str  # "6.0/10.0 s", "114/150 requests", "8/16 connections", "3 in flight"
    completed: float = 0.0
    total: float | None = None  # None: no end known (the bar pulses)
    eta_s: float | None = None
    counts: str = ""  # "done 114  failed 0  in flight 16  19.0 req/s  TTFT p50 101.7 ms"
    failed: int = 0
    measured: int = 0  # measured requests ended so far (done and failed)
    stage_s: float | None = None  # a command's stage: how long it has taken so far

    @property
    def percent(self) -> float | None:
        return None if not self.total else min(100.0, 100 * self.completed / self.total)

    def line(self) -> str:
        """The view as one plain line (a log's)."""
        parts = [f"{self.title}: {self.phase}", self.amount]
        if self.percent is not None:
            parts.append(f"{self.percent:.0f}%")
        if self.eta_s is not None:
            parts.append(f"ETA {eta_text(self.eta_s)}")
        return "  ".join(p for p in (*parts, self.counts) if p)


def eta_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class LoadProgress:
    """The command's stage and every worker's latest snapshot, read as one `View`. Snapshots
    arrive from another thread with several workers, hence the lock."""

    def __init__(self, title: str = "bench", clock: Callable[[], float] = time.monotonic) -> None:
        self.title = title
        self._clock = clock
        self._lock = threading.Lock()
        self._stage = "starting"
        self._stage_at = clock()
        self._latest: dict[int, tuple[float, dict[str, Any]]] = {}  # worker: (arrival, snap)

    def stage(self, text: str) -> None:
        """The command's own step, shown until the workers report."""
        with self._lock:
            self._stage, self._stage_at = text, self._clock()
            self._latest.clear()

    def update(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            before = self._latest.get(snapshot["worker"])
            if before is not None and (
                snapshot["label"] != before[1]["label"]
                or PHASES.index(snapshot["phase"]) < PHASES.index(before[1]["phase"])
            ):
                self._latest.clear()  # a sweep's next step: the last one's counts are done
            self._latest[snapshot["worker"]] = (self._clock(), snapshot)

    __call__ = update

    def view(self) -> View:
        now = self._clock()
        with self._lock:
            latest = list(self._latest.values())
            stage, stage_at = self._stage, self._stage_at
        if not latest:
            return View(self.title, stage, "", stage_s=now - stage_at)
        snaps = [snap for _, snap in latest]
        first = snaps[0]
        phase = min((s["phase"] for s in snaps), key=PHASES.index)
        title = f"{self.title} {first['label']}".strip()

        def total(key: str) -> int:
            return sum(int(s[key]) for s in snaps)

        # The clock runs on between snapshots: each worker's, moved on by the time since.
        elapsed = max(
            s["elapsed_s"] + (now - at if s["phase"] not in ("priming", "done") else 0.0)
            for at, s in latest
        )
        done, failed, inflight = total("done"), total("failed"), total("inflight")
        if phase == "priming":
            opened, wanted = total("primed"), total("priming")
            return View(title, WORDS[phase], f"{opened}/{wanted} connections", opened, wanted)
        if phase == "warm-up":
            warmup = float(first["warmup_s"])
            spent = min(warmup, warmup + elapsed)  # moved on past its end: the next tick says
            return View(
                title,
                WORDS[phase],
                f"{spent:.1f}/{warmup:g} s",
                spent,
                warmup,
                warmup - spent,
                f"{total('warmup_done')} requests done (not measured)  in flight {inflight}",
            )
        ttfts = sorted(s["ttft_p50_ms"] for s in snaps if s["ttft_p50_ms"] is not None)
        ttft = f"{ttfts[len(ttfts) // 2]:.1f} ms" if ttfts else "-"
        rate = done / elapsed if elapsed > 0 else 0.0
        counts = (
            f"done {done}  failed {failed}  in flight {inflight}  {rate:.1f} req/s  TTFT p50 {ttft}"
        )
        if phase == "measuring":
            return _measuring(title, first, elapsed, done, failed, counts)
        measured = done + failed
        if phase == "draining":
            grace = first["grace_s"]
            limit = "no cut-off" if grace is None else f"--grace {grace:g} s"
            amount = f"{inflight} in flight ({limit})"
            return View(title, "draining", amount, 0, None, None, counts, failed, measured)
        amount = f"{elapsed:.1f} s measured"
        return View(title, "done", amount, 1, None, None, counts, failed, measured)


def _measuring(
    title: str, load: dict[str, Any], elapsed: float, done: int, failed: int, counts: str
) -> View:
    """The measured window's progress: by request count or by time, whichever ends first."""
    duration, requests, measured = load["duration_s"], load["requests"], done + failed
    by_time = None if duration is None else min(elapsed, duration) / duration
    by_count = None if requests is None else measured / requests
    if requests is not None and (by_time is None or (by_count or 0.0) >= by_time):
        eta = (requests - measured) * elapsed / measured if measured else None
        amount, completed, total = f"{measured}/{requests} requests", measured, requests
    else:
        completed = min(elapsed, duration)
        amount, total, eta = f"{completed:.1f}/{duration:g} s", duration, duration - completed
    return View(title, "measuring", amount, completed, total, eta, counts, failed, measured)


class LiveProgress(LoadProgress):
    """On a terminal: the view redrawn in place four times a second (rich), gone at the end
    (the summary follows)."""

    def __init__(
        self, console: Console, title: str = "bench", clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(title, clock)
        self.console = console
        self._live = Live(self, console=console, refresh_per_second=4, transient=True)

    def __rich__(self) -> Group:
        view = self.view()
        bar = Table.grid(padding=(0, 1))  # one row: its columns fit it alone
        bar.add_row(
            Text(f"{view.title} · {view.phase}", style="bold"),
            ProgressBar(  # no total: it pulses (a stage, the drain); a finished run: full
                total=view.total if view.phase != "done" else 1,
                completed=view.completed,
                width=32,
            ),
            Text(view.amount if view.stage_s is None else f"{view.stage_s:.1f} s"),
            Text("" if view.percent is None else f"{view.percent:3.0f}%"),
            Text("" if view.eta_s is None else f"ETA {eta_text(view.eta_s)}", style="cyan"),
        )
        counts = Text("  " + view.counts, style="red" if view.failed else "dim")
        return Group(bar, counts) if view.counts else Group(bar)

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)


class LogProgress(LoadProgress):
    """In a log: a line at each phase change, then every LOG_EVERY_S while measuring once the
    window has a result, and the final counts."""

    def __init__(
        self, console: Console, title: str = "bench", clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(title, clock)
        self.console = console
        self._said = ""
        self._next_s = 0.0

    def stage(self, text: str) -> None:
        super().stage(text)
        self._say(self.view())

    def update(self, snapshot: dict[str, Any]) -> None:
        super().update(snapshot)
        self._say(self.view())

    __call__ = update

    def _say(self, view: View) -> None:
        now = self._clock()
        changed = view.phase != self._said
        if view.phase == "measuring":
            if not view.measured:  # the first line once the window has a result
                return
            if not changed and now < self._next_s:
                return
            self._next_s = now + LOG_EVERY_S
        elif not changed:
            return
        self._said = view.phase
        self.console.print(Text(view.line()), soft_wrap=True)
