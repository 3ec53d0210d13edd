"""The workload's sections of a run's document (docs/workloads.md) as words, table cells and
the console's tables: asked against received lengths, per turn, the prompt cache and the
time slices. The HTML page (engine/report/workload_html.py) shows the same cells.

Every function reads a document and skips what it lacks: a load without these workloads,
or a document written before them, shows nothing new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table
from rich.text import Text

from engine.report.text import counts_text

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "LENGTH_HEAD",
    "SLICES_SHOWN",
    "SLICE_HEAD",
    "TURN_HEAD",
    "length_rows",
    "lengths_note",
    "prefix_cache_text",
    "shown_slices",
    "slice_cells",
    "turn_cells",
    "workload_tables",
]

LENGTH_HEAD = ("tokens", "mean", "stdev", "p5", "p50", "p95", "min", "max", "n")
TURN_HEAD = (
    "turn",
    "sent",
    "completed",
    "TTFT p50",
    "TTFT p90",
    "TTFT p99",
    "E2E p50",
    "E2E p99",
    "input tok",
    "cached tok",
)
SLICE_HEAD = (
    "slice (s)",
    "sent",
    "completed",
    "failed",
    "cancelled",
    "req/s",
    "out tok/s",
    "TTFT p50",
    "TTFT p99",
    "ITL p50",
    "ITL p99",
    "E2E p50",
    "goodput",
)
SLICES_SHOWN = 12  # the console's slice rows: the first and last halves, a count between


def _n(value: float | None) -> str:
    """A token count: whole when it is, one decimal when a mean or percentile is not."""
    if value is None:
        return "-"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def length_rows(lengths: Mapping[str, Any]) -> list[list[str]]:
    """Asked and received, input then output, each a row of LENGTH_HEAD's cells."""
    rows = []
    for side in ("input", "output"):
        if not (facts := lengths.get(side)):
            continue
        for which in ("asked", "received"):
            spread = facts[which]
            cells = [_n(spread[k]) for k in ("mean", "stdev", "p5", "p50", "p95", "min", "max")]
            rows.append([f"{side} {which}", *cells, str(spread["count"])])
    return rows


def lengths_note(lengths: Mapping[str, Any]) -> str:
    """The ratio of received to asked, and how many answers ended short of their ask."""
    ratios = [
        f"{side} {lengths[side]['ratio_mean']:.3f}"
        for side in ("input", "output")
        if lengths.get(side) and lengths[side]["ratio_mean"] is not None
    ]
    parts = [f"received / asked, mean per request: {', '.join(ratios)}"] if ratios else []
    if counted := lengths.get("counted_in"):
        parts.insert(0, f"prompts counted in {counted}")
    short = (lengths.get("output") or {}).get("short")
    if short is not None:
        reasons = counts_text(short["reasons"])
        parts.append(
            f"{short['count']} completed answers ({short['share']:.1%}) ended short of their "
            f"asked output" + (f" ({reasons})" if reasons else "")
        )
    return "; ".join(parts)


def turn_cells(row: Mapping[str, Any]) -> list[str]:
    ttft, e2e = row["ttft_ms"], row["e2e_ms"]
    return [
        str(row["turn"]),
        str(row["sent"]),
        str(row["completed"]),
        *(_ms(ttft[k]) for k in ("p50", "p90", "p99")),
        _ms(e2e["p50"]),
        _ms(e2e["p99"]),
        _n(row["input_tokens_mean"]),
        _n(row["cached_tokens_mean"]),
    ]


def slice_cells(row: Mapping[str, Any]) -> list[str]:
    good = row["goodput_fraction"]
    return [
        f"{row['start_s']:g}-{row['end_s']:g}",
        *(str(row[k]) for k in ("sent", "completed", "failed", "cancelled")),
        f"{row['request_throughput']:.2f}",
        f"{row['output_token_throughput']:.0f}",
        *(_ms(row[k]) for k in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99")),
        _ms(row["e2e_ms_p50"]),
        "-" if good is None else f"{good:.0%}",
    ]


def shown_slices(rows: list[Any], limit: int = SLICES_SHOWN) -> tuple[list[Any], list[Any], int]:
    """The first and last halves of `limit` rows and how many lie between (hidden)."""
    if len(rows) <= limit:
        return rows, [], 0
    half = limit // 2
    return rows[:half], rows[-half:], len(rows) - 2 * half


def prefix_cache_text(doc: Mapping[str, Any]) -> str | None:
    """How the server's prompt cache served the shared prefixes (None: no prefix groups)."""
    cache = doc.get("prefix_cache")
    if not cache:
        return None
    groups = f"{cache['groups']} prefix group(s)"
    if not cache["reported"]:
        return f"the server reported no cached tokens ({groups})"
    hit, miss = cache["ttft_ms_hit"], cache["ttft_ms_miss"]
    share = cache["cached_share_mean"]
    ttft = [f"{_ms(hit['p50'])} ms with a hit"] if hit["count"] else []
    ttft += [f"{_ms(miss['p50'])} ms without"] if miss["count"] else []
    return (
        f"{cache['hits']} of {cache['reported']} completed requests hit the prompt cache "
        f"({cache['hit_share']:.1%})"
        + (f", {share:.1%} of their input cached on average" if share else "")
        + (f"; TTFT p50 {', '.join(ttft)}" if ttft else "")
        + f"; {groups}"
    )


def _table(title: str, head: tuple[str, ...], rows: list[list[str]]) -> Table:
    table = Table(title=title or None, title_justify="left")
    for n, name in enumerate(head):
        table.add_column(name, justify="left" if n == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


# A terminal is narrower than a page: short headers, no vertical rules, fewer columns.
SHORT = {"completed": "done", "failed": "fail", "cancelled": "cut", "out tok/s": "tok/s"}


def _narrow(head: tuple[str, ...], rows: list[list[str]], drop: set[str]) -> Table:
    """The table without the `drop` columns, compact enough for 80 columns."""
    keep = [n for n, name in enumerate(head) if name not in drop]
    table = _table("", tuple(SHORT.get(head[n], head[n]) for n in keep), [])
    table.box, table.padding, table.show_edge = box.SIMPLE_HEAD, (0, 0), False
    for row in rows:
        table.add_row(*(row[n] for n in keep))
    return table


def workload_tables(doc: Mapping[str, Any]) -> list[Table | Text]:
    """The console's workload tables, those the document has: lengths, turns, slices (the
    columns a page has room for and the run has no use for are left out)."""
    out: list[Table | Text] = []
    if lengths := doc.get("lengths"):
        out.append(_table("requested and received lengths", LENGTH_HEAD, length_rows(lengths)))
        out.append(Text(lengths_note(lengths)))
    if turns := doc.get("turns"):
        table = _narrow(TURN_HEAD, [turn_cells(r) for r in turns], {"TTFT p90", "E2E p99"})
        table.title = "per turn (ms; tokens: means)"
        out.append(table)
    if slices := doc.get("slices"):
        first, last, hidden = shown_slices(slices)
        rows = [slice_cells(r) for r in first]
        if hidden:
            rows.append([f"{hidden} more", *[""] * (len(SLICE_HEAD) - 1)])
        rows += [slice_cells(r) for r in last]
        drop = {"ITL p99"}
        drop |= set() if "cancelled" in doc else {"cancelled"}
        drop |= set() if doc.get("goodput") else {"goodput"}
        table = _narrow(SLICE_HEAD, rows, drop)
        table.title = "per time slice, by intended start (ms)" + (
            f": {hidden} of {len(slices)} not shown (all in result.json and the HTML report)"
            if hidden
            else ""
        )
        out.append(table)
    return out
