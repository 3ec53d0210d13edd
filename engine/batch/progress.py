"""The live progress display of a batch run (rich, on stderr; the `cli` extra).

The runner only bumps plain counters on its `BatchSummary`; this display samples them twice a
second from one task, so the per-record cost of showing progress is zero and no rich thread
competes with the event loop for the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Final, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from engine.batch.summary import BatchSummary

REFRESH_S: Final = 0.5


def _rate_and_eta(summary: BatchSummary, now: float) -> tuple[float, float | None]:
    elapsed = max(now - summary.started_s, 1e-9)
    rate = summary.finished / elapsed
    left = summary.to_do - summary.finished
    return rate, (left / rate if rate > 0 else None)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes:02}:{secs:02}"


class ProgressDisplay:
    """`async with ProgressDisplay(summary):` shows done/failed/rate/tokens/ETA while it runs."""

    def __init__(self, summary: BatchSummary, console: Console | None = None) -> None:
        self.summary = summary
        self.progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            auto_refresh=False,
            transient=False,
        )
        self._task_id = self.progress.add_task("batch", total=summary.to_do, status="")
        self._ticker: asyncio.Task[None] | None = None

    def update(self) -> None:
        s = self.summary
        rate, eta = _rate_and_eta(s, time.monotonic())
        status = (
            f"ok {s.succeeded:,}  [red]failed {s.failed + s.invalid_written:,}[/]  "
            f"{rate:,.0f} req/s  {s.total_tokens:,} tok  ETA {_duration(eta)}"
        )
        self.progress.update(self._task_id, completed=s.finished, total=s.to_do, status=status)
        self.progress.refresh()

    async def _tick(self) -> None:
        while True:
            self.update()
            await asyncio.sleep(REFRESH_S)

    async def __aenter__(self) -> Self:
        self.progress.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self.update()
        self.progress.stop()
