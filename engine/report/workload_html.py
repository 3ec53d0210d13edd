"""The report page's workload sections and their charts (docs/workloads.md): asked against
received lengths, per turn, the prompt cache, and the time slices. The cells are the
console's (engine/report/workload.py); a section the document lacks is not shown.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.loadtest.metrics import completed
from engine.report.figures import BLUE, PURPLE, RED, YELLOW, go, make_subplots, styled
from engine.report.page import kv
from engine.report.workload import (
    LENGTH_HEAD,
    SLICE_HEAD,
    SLICES_SHOWN,
    TURN_HEAD,
    length_rows,
    lengths_note,
    prefix_cache_text,
    slice_cells,
    turn_cells,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from engine.loadtest.metrics import RequestRecord
    from engine.loadtest.result import BenchResult
    from engine.report.page import Charts

__all__ = [
    "has_workload",
    "lengths_chart",
    "slices_chart",
    "slices_section",
    "turns_chart",
    "workload_section",
]

MAX_BINS = 60
e = html.escape


def has_workload(doc: Mapping[str, Any]) -> bool:
    return any(doc.get(key) for key in ("lengths", "turns", "prefix_cache"))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _edges(data: np.ndarray) -> np.ndarray:
    """Shared bins for both sides of a length histogram (one token wide at least)."""
    lo, hi = math.floor(float(data.min())), math.ceil(float(data.max()))
    count = min(MAX_BINS, max(10, math.ceil(math.sqrt(data.size))), max(hi - lo, 1))
    return np.linspace(lo - 0.5, hi + 0.5, count + 1)


def lengths_chart(records: Sequence[RequestRecord]) -> go.Figure | None:
    """Asked lengths (every request sent) over received ones (usage of completed requests),
    one panel per side whose asked lengths vary, in the same bins (None: none varies)."""
    ok = completed(records)
    sides = []
    for side, asked, got in (
        ("output", "asked_output_tokens", "output_tokens"),
        ("input", "asked_input_tokens", "input_tokens"),
    ):
        wanted = np.array([getattr(r, asked) for r in records if getattr(r, asked) is not None])
        received = np.array(
            [
                getattr(r, got)
                for r in ok
                if getattr(r, asked) is not None and getattr(r, got) is not None
            ],
            dtype=np.float64,
        )
        if wanted.size and wanted.min() != wanted.max():  # one length: the table says it
            sides.append((side, wanted.astype(np.float64), received))
    if not sides:
        return None
    fig = make_subplots(
        rows=1,
        cols=len(sides),
        subplot_titles=[f"{side} tokens: asked vs received" for side, _, _ in sides],
        horizontal_spacing=0.08,
    )
    for col, (side, wanted, received) in enumerate(sides, start=1):
        edges = _edges(np.concatenate((wanted, received)))
        for name, data, color in (("asked", wanted, BLUE), ("received", received, YELLOW)):
            counts, _ = np.histogram(data, edges)
            fig.add_trace(
                go.Bar(
                    x=(edges[:-1] + edges[1:]) / 2,
                    y=counts,
                    width=float(edges[1] - edges[0]),
                    name=f"{name} (n={data.size})",
                    legendgroup=name,
                    showlegend=col == 1,
                    marker_color=color,
                    opacity=0.6,
                    hovertemplate=f"{name} {side}: %{{x:.0f}} tokens, %{{y}} requests"
                    "<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="tokens", row=1, col=col)
        fig.update_yaxes(title_text="requests", rangemode="tozero", row=1, col=col)
    return styled(fig, 340, barmode="overlay")


def turns_chart(turns: Sequence[Mapping[str, Any]]) -> go.Figure:
    """TTFT p50 and p90 by turn: whether a longer history (and its cache) costs first tokens."""
    fig = go.Figure()
    xs = [row["turn"] for row in turns]
    for stat, color in (("p50", PURPLE), ("p90", RED)):
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[row["ttft_ms"][stat] for row in turns],
                mode="lines+markers",
                name=f"TTFT {stat}",
                line={"color": color},
                hovertemplate=f"turn %{{x}}: TTFT {stat} %{{y:.2f}} ms<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="turn (from 0)", tickmode="linear", dtick=1)
    fig.update_yaxes(title_text="ms", rangemode="tozero")
    return styled(fig, 320)


def slices_chart(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Throughput over TTFT p50/p99, slice by slice (each point at its slice's middle)."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        specs=[[{"secondary_y": True}], [{}]],
        subplot_titles=["throughput per slice", "TTFT per slice (ms)"],
        vertical_spacing=0.12,
    )
    mids = [(row["start_s"] + row["end_s"]) / 2 for row in rows]
    lines = (
        ("completed req/s", "request_throughput", YELLOW, 1, True, "%{y:.2f} req/s"),
        ("output tok/s", "output_token_throughput", BLUE, 1, False, "%{y:.0f} tok/s"),
        ("TTFT p50", "ttft_ms_p50", PURPLE, 2, False, "%{y:.2f} ms"),
        ("TTFT p99", "ttft_ms_p99", RED, 2, False, "%{y:.2f} ms"),
    )
    for name, key, color, row, secondary, hover in lines:
        fig.add_trace(
            go.Scatter(
                x=mids,
                y=[r[key] for r in rows],
                mode="lines+markers",
                name=name,
                line={"color": color},
                hovertemplate=f"{name} {hover}<extra></extra>",
            ),
            row=row,
            col=1,
            secondary_y=secondary if row == 1 else None,
        )
    fig.update_yaxes(title_text="tokens/s", rangemode="tozero", row=1, col=1, secondary_y=False)
    fig.update_yaxes(
        title_text="req/s",
        rangemode="tozero",
        showgrid=False,
        tickmode="auto",  # its own round ticks, not the left axis' grid
        row=1,
        col=1,
        secondary_y=True,
    )
    fig.update_yaxes(title_text="ms", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(showticklabels=True)
    fig.update_xaxes(title_text="seconds into the measured window (slice middle)", row=2, col=1)
    return styled(fig, 520, hovermode="x unified", margin={"l": 60, "r": 60, "t": 70, "b": 45})


def workload_section(result: BenchResult, doc: Mapping[str, Any], charts: Charts) -> str:
    """Lengths (table, note, histogram), turns (table, chart) and the prompt cache."""
    parts = []
    if lengths := doc.get("lengths"):
        parts.append(
            "<h3>Requested and received lengths</h3>"
            + _table(LENGTH_HEAD, length_rows(lengths))
            + f'<p class="note">{e(lengths_note(lengths))}. Asked: every request sent; '
            "received: the server's usage of the completed ones.</p>"
        )
        if (figure := lengths_chart(result.measured)) is not None:
            parts.append(charts.add(figure, "lengths"))
    if turns := doc.get("turns"):
        parts.append(
            "<h3>Per turn</h3>"
            + _table(TURN_HEAD, [turn_cells(row) for row in turns])
            + '<p class="note">Latencies in ms, tokens as the server counted them (means '
            "over completed requests); a later turn carries the earlier answers.</p>"
            + charts.add(turns_chart(turns), "turns")
        )
    if (cache := prefix_cache_text(doc)) is not None:
        parts.append("<h3>Prompt cache</h3>" + kv({"shared prefixes": cache}))
    return "".join(parts)


def slices_section(doc: Mapping[str, Any], charts: Charts) -> str:
    """The slices' chart and table (folded when long); empty without slices."""
    rows = doc.get("slices")
    if not rows:
        return ""
    table = _table(SLICE_HEAD, [slice_cells(row) for row in rows])
    fold = "" if len(rows) > 2 * SLICES_SHOWN else " open"
    return (
        '<p class="note">Each request counts in the slice of its intended start, so a slice '
        "holds the load offered during it and everything that load got; latencies in ms, "
        "rates per second of the slice.</p>"
        + charts.add(slices_chart(rows), "slices")
        + f"<details{fold}><summary>{len(rows)} slices</summary>{table}</details>"
    )
