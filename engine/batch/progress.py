"""Progress display and final summary of a batch run (rich, on stderr).

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
PROBLEM_CHARS: Final = 200  # a bad line's reason may quote a huge value: keep the report short


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


def _clip(text: str) -> str:
    return text if len(text) <= PROBLEM_CHARS else text[:PROBLEM_CHARS] + "…"


def format_summary(summary: BatchSummary) -> str:
    """The final report: counts, tokens, wall time and errors by kind (plain text)."""
    s = summary
    lines = [
        (
            f"input: {s.lines:,} lines, {s.requests:,} requests"
            f"{f' in shard {s.shard}' if s.shard else ''}, "
            f"{s.invalid:,} invalid, {s.already_done:,} already done"
        ),
    ]
    if s.invalid:
        where = "would go" if s.dry_run else "go"
        lines.append(f"invalid input lines ({where} to the errors file):")
        lines += [f"  {_clip(problem)}" for problem in s.problems]
        if s.invalid > len(s.problems):
            lines.append(f"  … and {s.invalid - len(s.problems):,} more")
    if s.dry_run:
        lines.append(
            f"dry run: {s.to_do:,} records to do, estimated {s.estimated_tokens:,} "
            "tokens for the shard (prompt chars/4 + output cap); nothing sent"
        )
    else:
        rate = s.finished / s.wall_s if s.wall_s > 0 else 0.0
        lines += [
            (
                f"this run: {s.succeeded:,} succeeded, {s.failed:,} failed, "
                f"{s.invalid_written:,} invalid lines written, in {s.wall_s:.1f} s "
                f"({rate:,.0f} records/s)"
            ),
            (
                f"tokens: {s.input_tokens:,} in + {s.output_tokens:,} out = {s.total_tokens:,}; "
                f"retries: {s.retries:,}"
            ),
        ]
        if s.repaired_bytes:
            lines.append(f"resume: truncated a torn last line ({s.repaired_bytes} bytes)")
        if s.resumed_failed:
            lines.append(
                f"errors file already held {s.resumed_failed:,} records "
                "(--retry-failed sends them again)"
            )
        if s.oversize_requests:
            lines.append(
                f"--tpm: {s.oversize_requests:,} requests estimated above the whole per-minute "
                "budget were each sent alone"
            )
        if s.retried_failed:
            lines.append(f"--retry-failed: {s.retried_failed:,} records of the errors file")
        if s.concurrency_min < s.concurrency:
            lines.append(
                f"concurrency: backed off on 429 from {s.concurrency:,} "
                f"to {s.concurrency_min:,} at the lowest"
            )
    for title, counter in (
        ("errors by kind", s.errors_by_kind),
        ("retries by kind", s.retries_by_kind),
        ("requests by endpoint", s.requests_by_endpoint),
    ):
        if counter and (title != "requests by endpoint" or len(counter) > 1):
            items = ", ".join(f"{k}: {v:,}" for k, v in counter.most_common())
            lines.append(f"{title}: {items}")
    return "\n".join(lines)
