"""The bench's console: the summary (rich) and the sweep's table (the live display while the
load runs is engine/report/progress.py).

The console shows the client's self-check right under the latency table, because a TTFT
measured by a saturated client is a number about the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.report.text import (
    COLUMNS,
    LATENCIES,
    client_state,
    counts_text,
    error_example,
    machine_text,
    reconnects_text,
    requests_text,
    retry_after_text,
    shown,
    tokens_text,
    warmup_text,
)
from engine.report.workload import prefix_cache_text, workload_tables

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["print_summary", "sweep_table"]


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
    if (cache := prefix_cache_text(doc)) is not None:
        rows.append(("prompt cache", cache))
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
    machine = machine_text(doc)
    line = (
        f"client self-check: {read}loop lag p50 {_ms(lag['p50'])} / p99 {_ms(lag['p99'])} "
        f"/ max {_ms(lag['max'])} ms; CPU (busy, % of a core) {cpus}"
        + (f"; machine: {machine}" if machine else "")
        + "\n"
    )
    style = "bold red" if client_state(doc)[1] else "green"
    return Text(line) + Text(client["verdict"], style=style)


def print_summary(doc: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    title = f"stream-engine bench {doc.get('label') or ''}".strip()
    console.print(latency_table(doc, title))
    console.print(client_text(doc))
    console.print(totals_table(doc))
    for part in workload_tables(doc):
        console.print(part)


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
            client_state(doc)[0],
        )
    return table
