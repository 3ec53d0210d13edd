"""The bench's console: the summary (rich), the sweep's table and the live progress line.

The console shows the client's self-check right under the latency table, because a TTFT
measured by a saturated client is a number about the client.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Self

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from engine.report.text import (
    COLUMNS,
    LATENCIES,
    counts_text,
    error_example,
    progress_text,
    reconnects_text,
    requests_text,
    retry_after_text,
    shown,
    tokens_text,
    warmup_text,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["LiveProgress", "LogProgress", "print_summary", "sweep_table"]

LOG_EVERY_S = 5.0  # the progress line's period when stderr is a log, not a terminal


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def latency_table(doc: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("ms")
    for name in COLUMNS:
        table.add_column(name.replace("p999", "p99.9"), justify="right")
    for label, key in LATENCIES:
        row = doc.get(key)
        if shown(row, key):
            table.add_row(label, *(_ms(row[c]) for c in COLUMNS))
    return table


def totals_table(doc: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    good = doc["goodput"]
    rows = [
        ("mode", f"{doc['mode']} loop, {doc['duration_s']:.2f} s measured"),
        ("requests", requests_text(doc)),
        (
            "throughput",
            (
                f"{doc['request_throughput']:.2f} req/s, "
                f"{doc['output_token_throughput']:.1f} output tok/s, "
                f"{doc['total_token_throughput']:.1f} total tok/s"
            ),
        ),
        ("tokens", tokens_text(doc)),
        ("concurrency", f"mean {doc['concurrency']['mean']}, max {doc['concurrency']['max']:g}"),
    ]
    if good is not None:
        rows.append(
            (
                "goodput",
                (
                    f"{good['request_rate']:.2f} req/s ({good['fraction']:.1%} "
                    f"of requests met {good['slo']})"
                ),
            )
        )
    if doc["end_reasons"]:
        rows.append(("end reasons", counts_text(doc["end_reasons"])))
    if doc["reconnects"]:
        rows.append(("reconnects", reconnects_text(doc)))
    if (waits := retry_after_text(doc)) is not None:
        rows.append(("Retry-After", waits))
    if doc["errors"]:
        rows.append(("errors", counts_text(doc["errors"])))
        rows.extend(
            (f"  {kind}", error_example(detail)) for kind, detail in doc["error_details"].items()
        )
    rows.append(("warm-up", warmup_text(doc)))
    for name, value in rows:  # Text: a server's message is shown as is, never as markup
        table.add_row(Text(name), Text(value))
    return table


def client_text(doc: dict[str, Any]) -> Text:
    client = doc["client"]
    lag = client["loop_lag_ms"]
    delay = client["read_delay_ms"]
    cpus = ", ".join(f"w{w['worker']} {w['busy_cpu_percent']:.0f}%" for w in client["workers"])
    read = (
        f"read delay (canary) p50 {_ms(delay['p50'])} / p99 {_ms(delay['p99'])} / max "
        f"{_ms(delay['max'])} ms; "
        if delay["count"]
        else ""
    )
    line = (
        f"client self-check: {read}loop lag p50 {_ms(lag['p50'])} / p99 {_ms(lag['p99'])} "
        f"/ max {_ms(lag['max'])} ms; CPU (busy, % of a core) {cpus}\n"
    )
    style = "bold red" if client["bottleneck"] else "green"
    return Text(line) + Text(client["verdict"], style=style)


def print_summary(doc: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    title = f"stream-engine bench {doc.get('label') or ''}".strip()
    console.print(latency_table(doc, title))
    console.print(client_text(doc))
    console.print(totals_table(doc))


def sweep_table(docs: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="sweep", title_justify="left")
    for name in (
        "run",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "TPOT p50",
        "E2E p99",
        "failed",
        "goodput/s",
        "client",
    ):
        table.add_column(name, justify="right")
    for doc in docs:
        good = doc["goodput"]
        table.add_row(
            doc["label"],
            f"{doc['request_throughput']:.2f}",
            f"{doc['output_token_throughput']:.0f}",
            _ms(doc["ttft_ms"]["p50"]),
            _ms(doc["ttft_ms"]["p99"]),
            _ms(doc["itl_ms"]["p50"]),
            _ms(doc["tpot_ms"]["p50"]),
            _ms(doc["e2e_ms"]["p99"]),
            str(doc["failed"]),
            "-" if good is None else f"{good['request_rate']:.2f}",
            "BOUND" if doc["client"]["bottleneck"] else "ok",
        )
    return table


class LiveProgress:
    """The progress line on a terminal, redrawn in place from every worker's snapshots."""

    def __init__(self, console: Console, title: str = "bench") -> None:
        self.console = console
        self.title = title
        self.latest: dict[int, dict[str, Any]] = {}
        self.started = time.monotonic()
        self._live = Live(self._render(), console=console, refresh_per_second=2, transient=True)

    def __call__(self, snapshot: dict[str, Any]) -> None:
        self.latest[snapshot["worker"]] = snapshot
        self._live.update(self._render())

    def _render(self) -> Group:
        return Group(Text(progress_text(list(self.latest.values()), self.title)))

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)


class LogProgress:
    """The progress line for a log, not a terminal: printed once the measured window has a
    result (a script waiting for the load to measure reads it), then every LOG_EVERY_S."""

    def __init__(self, console: Console, title: str = "bench") -> None:
        self.console = console
        self.title = title
        self.latest: dict[int, dict[str, Any]] = {}
        self._next_s = 0.0
        self._last_s = 0.0

    def __call__(self, snapshot: dict[str, Any]) -> None:
        self.latest[snapshot["worker"]] = snapshot
        elapsed = snapshot["elapsed_s"]
        if elapsed < self._last_s:  # a sweep's next segment: its own clock
            self._next_s = 0.0
        self._last_s = elapsed
        measured = sum(s["done"] + s["failed"] for s in self.latest.values())
        if measured and elapsed >= self._next_s:
            self.console.print(Text(progress_text(list(self.latest.values()), self.title)))
            self._next_s = elapsed + LOG_EVERY_S
