"""The bench report's charts: pure functions of a run's records and its document.

Data are reduced here, before they reach the page: histograms are binned, CDFs sampled at
most at ~600 quantiles, timelines binned to at most `TIME_BINS` steps, so a report's size
follows the number of charts, not the number of requests. Every text that came from a server
or a user is HTML-escaped, because Plotly renders a few tags (`<b>`, `<a>`) in labels and
hovers.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.loadtest.metrics import completed, concurrency_curve, ended_s, token_times
from engine.report.figures import (
    BLUE,
    COLORWAY,
    CYAN,
    GREEN,
    GREY,
    PURPLE,
    RED,
    YELLOW,
    go,
    make_subplots,
    styled,
    vline,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from engine.loadtest.metrics import RequestRecord

TIME_BINS = 120  # timeline resolution: enough to see a stall, bounded for an hour-long run
CDF_POINTS = 600  # above this many values the CDF is drawn through quantiles
MAX_BINS = 60
# A server histogram drawn beside the client's distribution of the same metric.
SERVER_TWINS = {"server_ttft_s": "ttft_ms", "server_itl_s": "itl_ms", "server_e2e_s": "e2e_ms"}


def _bins(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Edges and counts over [min, p99.9], plus how many values lie beyond (the tail bar):
    one outlier must not squeeze the whole distribution into a single bar."""
    lo, hi = float(data.min()), float(np.percentile(data, 99.9))
    if hi <= lo:
        hi = lo + max(abs(lo) * 0.01, 1e-3)
    count = min(MAX_BINS, max(10, math.ceil(math.sqrt(data.size))))
    edges = np.linspace(lo, hi, count + 1)
    counts, _ = np.histogram(data[data <= hi], edges)
    return edges, counts, int(np.count_nonzero(data > hi))


def _cdf(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every value when few; else quantiles, dense near 1 so the tail keeps its shape."""
    ordered = np.sort(data)
    if ordered.size <= CDF_POINTS:
        return ordered, np.arange(1, ordered.size + 1) / ordered.size
    body = np.linspace(0.0, 0.99, 400)
    tail = 1 - np.geomspace(0.01, 1 / ordered.size, 200)
    qs = np.unique(np.concatenate((body, tail, [1.0])))
    return np.quantile(ordered, qs), qs


def server_buckets(hist: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bucket upper bounds in ms (inf for `+Inf`), per-bucket counts and readable labels."""
    bounds = np.array([float(b) for b in hist["le"]], dtype=np.float64) * 1000
    counts = np.asarray(hist["counts"], dtype=np.float64)
    labels = []
    for i, upper in enumerate(bounds):
        lower = 0.0 if i == 0 else bounds[i - 1]
        labels.append(f">{lower:g}" if math.isinf(upper) else f"\u2264{upper:g}")
    return bounds, counts, labels


def _client_in_buckets(data: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The client's values counted in the server's buckets (Prometheus `le`: upper bound
    inclusive); values above a last finite bound land in that last bucket's overflow."""
    index = np.minimum(np.searchsorted(bounds, data, side="left"), bounds.size - 1)
    return np.bincount(index, minlength=bounds.size).astype(np.float64)


def distribution(
    title: str,
    unit_of: str,
    data: np.ndarray,
    slo_ms: float | None = None,
    slo_note: str = "",
    server: Mapping[str, Any] | None = None,
) -> go.Figure:
    """Histogram and CDF of one latency (ms), p50/p99 and the SLO marked; with `server` (a
    scraped histogram of the same metric, seconds) a third panel compares both in the
    server's buckets, each as a share of its own total."""
    cols = 3 if server else 2
    titles = [f"{title}: histogram", f"{title}: CDF"]
    if server:
        titles.append(f"{title}: server vs client (server's buckets)")
    fig = make_subplots(
        rows=1,
        cols=cols,
        subplot_titles=titles,
        horizontal_spacing=0.07,
        column_widths=[0.36, 0.36, 0.28][:cols] if server else None,
    )
    edges, counts, tail = _bins(data)
    width = float(edges[1] - edges[0])
    fig.add_trace(
        go.Bar(
            x=(edges[:-1] + edges[1:]) / 2,
            y=counts,
            width=width,
            marker_color=BLUE,
            name=unit_of,
            showlegend=False,
            customdata=np.column_stack((edges[:-1], edges[1:])),
            hovertemplate=(
                f"%{{customdata[0]:.2f}}-%{{customdata[1]:.2f}} ms: %{{y}} {unit_of}<extra></extra>"
            ),
        ),
        row=1,
        col=1,
    )
    if tail:
        fig.add_trace(
            go.Bar(
                x=[float(edges[-1]) + width],
                y=[tail],
                width=width,
                marker_color=GREY,
                showlegend=False,
                hovertemplate=(
                    f"{tail} {unit_of} above p99.9 (up to "
                    f"{float(data.max()):.2f} ms)<extra></extra>"
                ),
            ),
            row=1,
            col=1,
        )
    xs, ys = _cdf(data)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            line={"color": GREEN, "width": 2},
            showlegend=False,
            hovertemplate=f"%{{y:.2%}} of {unit_of} at or below %{{x:.2f}} ms<extra></extra>",
        ),
        row=1,
        col=2,
    )
    top = float(max(counts.max(), tail)) * 1.05
    for q, color in ((50, PURPLE), (99, RED)):
        value = float(np.percentile(data, q))
        for col, height in ((1, top), (2, 1.0)):  # 2 decimals: the table's, the same number
            vline(fig, value, height, f"p{q} {value:.2f} ms", color, 1, col, first=col == 1)
    if slo_ms is not None:
        within = float(np.mean(data <= slo_ms))
        vline(
            fig,
            slo_ms,
            1.0,
            f"SLO {slo_ms:g} ms{slo_note}: {within:.1%} of {unit_of} within",
            "#000",
            1,
            2,
            dash="dot",
        )
    fig.update_xaxes(title_text="ms", row=1, col=1)
    fig.update_xaxes(title_text="ms", row=1, col=2)
    fig.update_yaxes(title_text=unit_of, rangemode="tozero", row=1, col=1)
    fig.update_yaxes(
        title_text=f"share of {unit_of}", tickformat=".0%", range=[0, 1.02], row=1, col=2
    )
    if server:
        _server_beside(fig, data, server, unit_of)
    return styled(fig, 370, margin={"l": 60, "r": 30, "t": 70, "b": 55})


def _server_beside(
    fig: go.Figure, data: np.ndarray, server: Mapping[str, Any], unit_of: str
) -> None:
    bounds, counts, labels = server_buckets(server)
    mine = _client_in_buckets(data, bounds)
    mean = server["sum"] / server["count"] * 1000 if server.get("count") else None
    name = f"server (n={server.get('count', int(counts.sum()))}" + (
        f", mean {mean:.1f} ms)" if mean is not None else ")"
    )
    for label, values, color in ((name, counts, YELLOW), (f"client (n={data.size})", mine, BLUE)):
        total = values.sum() or 1.0
        fig.add_trace(
            go.Bar(
                x=labels,
                y=values / total,
                name=label,
                marker_color=color,
                customdata=values,
                hovertemplate=(
                    f"{html.escape(label.split(' ')[0])} "
                    f"%{{x}}: %{{y:.1%}} (%{{customdata:.0f}} "
                    f"{unit_of})<extra></extra>"
                ),
            ),
            row=1,
            col=3,
        )
    fig.update_yaxes(title_text="share", tickformat=".0%", row=1, col=3)
    fig.update_xaxes(type="category", title_text="ms (bucket: le)", row=1, col=3)
    fig.update_layout(barmode="group")


CANCELLED = "cancelled by the client"  # the timeline's bar for cancellations, not an error


def _kind(record: RequestRecord) -> str:
    return CANCELLED if record.cancelled else record.error or "unknown"


def _time_grid(span: float) -> tuple[np.ndarray, float]:
    width = max(span / TIME_BINS, 0.1)
    return np.arange(0.0, span + width, width), width


def _binned_lag(
    measured: Sequence[RequestRecord], edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Schedule lag p50 and max per time bin (by intended start): bounded, unlike a scatter
    of every request."""
    starts = np.array([r.intended_s for r in measured])
    lags = np.array([r.lag_ms for r in measured])
    which = np.digitize(starts, edges) - 1
    mids, p50, top = [], [], []
    for i in range(edges.size - 1):
        chosen = lags[which == i]
        if chosen.size:
            mids.append((edges[i] + edges[i + 1]) / 2)
            p50.append(float(np.percentile(chosen, 50)))
            top.append(float(chosen.max()))
    return np.array(mids), np.array(p50), np.array(top)


def timeline(
    records: Sequence[RequestRecord],
    error_details: Mapping[str, Any],
    series: Mapping[str, Sequence[Sequence[float]]],
) -> go.Figure:
    """Throughput, requests in flight, failures by kind, schedule lag and every scraped server
    series on one shared time axis (seconds into the measured window): zooming one row
    zooms all, so a latency spike lines up with the server's queue at that moment."""
    ok = completed(records)
    failed = [r for r in records if not r.ok]  # cancelled ones too, as their own bar
    tokens = token_times(ok)
    ends = np.array([ended_s(r) for r in records])
    span = max(
        float(tokens.max()) if tokens.size else 0.0, float(ends.max()) if ends.size else 0.0, 1e-3
    )
    edges, width = _time_grid(span)
    rows = ["throughput", "requests in flight (from intended start)"]
    if failed:
        what = "failed or cancelled" if any(r.cancelled for r in failed) else "failed"
        rows.append(f"{what} requests per {width:.3g} s, by error")
    rows.append("schedule lag, ms (by intended start)")
    rows.extend(f"server: {html.escape(name)}" for name in series)
    specs = [[{"secondary_y": True}]] + [[{}] for _ in rows[1:]]
    fig = make_subplots(
        rows=len(rows),
        cols=1,
        shared_xaxes=True,
        specs=specs,
        subplot_titles=rows,
        vertical_spacing=min(0.07, 0.35 / len(rows)),
        row_heights=[1.4] + [1.0] * (len(rows) - 1),
    )
    left = edges[:-1]
    tok, _ = np.histogram(tokens, edges)
    fig.add_trace(
        go.Scatter(
            x=left,
            y=tok / width,
            name="output tokens/s",
            line_shape="hv",
            line={"color": BLUE},
            hovertemplate="%{y:.0f} tok/s",
            legend="legend",
        ),
        row=1,
        col=1,
    )
    # Completions come in waves (a closed loop's users finish together): a trailing window a
    # few bins wide shows the rate, where per-bin counts would show the waves' comb.
    done = np.sort(np.array([ended_s(r) for r in ok]))
    window = max(1.0, span / 40)
    rate = (
        np.searchsorted(done, edges, side="right")
        - np.searchsorted(done, edges - window, side="right")
    ) / window
    fig.add_trace(
        go.Scatter(
            x=edges,
            y=rate,
            name=f"completed req/s (trailing {window:g} s)",
            line={"color": YELLOW},
            hovertemplate="%{y:.1f} req/s",
            legend="legend",
        ),
        row=1,
        col=1,
        secondary_y=True,
    )
    times, level = concurrency_curve(records)
    if times.size:  # on a grid: a closed loop's instantaneous dips would fill the row
        grid = np.linspace(float(times[0]), float(times[-1]), 600)
        at = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, level.size - 1)
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=level[at],
                name="in flight",
                line_shape="hv",
                line={"color": PURPLE},
                hovertemplate="%{y} in flight",
                showlegend=False,
            ),
            row=2,
            col=1,
        )
    legends = {"legend": 1}
    row = 3
    if failed:
        legends["legend2"] = row
        kinds = dict.fromkeys([*error_details, *map(_kind, failed)])
        for n, kind in enumerate(kinds):
            color = GREY if kind == CANCELLED else (RED, YELLOW, PURPLE, CYAN, BLUE)[n % 5]
            hits, _ = np.histogram([ended_s(r) for r in failed if _kind(r) == kind], edges)
            messages = (error_details.get(kind) or {}).get("messages") or [
                "cut off on purpose (--cancel-rate)" if kind == CANCELLED else "(no message)"
            ]
            text = html.escape(messages[0][:160])
            fig.add_trace(
                go.Bar(
                    x=left + width / 2,
                    y=hits,
                    width=width,
                    name=html.escape(kind),
                    marker_color=color,
                    customdata=[[html.escape(kind), text]] * hits.size,
                    legend="legend2",
                    hovertemplate="%{customdata[0]}: %{y}<br>%{customdata[1]}<extra></extra>",
                ),
                row=row,
                col=1,
            )
        fig.update_layout(barmode="stack")
        row += 1
    legends[f"legend{len(legends) + 1}"] = row
    mids, p50, top = _binned_lag(records, edges)
    for name, ys, color in (("p50", p50, GREEN), ("max", top, RED)):
        fig.add_trace(
            go.Scatter(
                x=mids,
                y=ys,
                name=name,
                mode="lines",
                line={"color": color},
                hovertemplate=f"{name} %{{y:.2f}} ms",
                legend=f"legend{len(legends)}",
            ),
            row=row,
            col=1,
        )
    for offset, (name, points) in enumerate(series.items(), start=row + 1):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        fig.add_trace(
            go.Scatter(
                x=pts[:, 0],
                y=pts[:, 1],
                name=html.escape(name),
                mode="lines+markers",
                marker={"size": 3},
                showlegend=False,
                line={"color": COLORWAY[offset % len(COLORWAY)]},
                hovertemplate="%{y:.4g}",
            ),
            row=offset,
            col=1,
        )
    fig.update_yaxes(
        title_text="tokens/s",
        row=1,
        col=1,
        secondary_y=False,
        title_font_color=BLUE,
        rangemode="tozero",
    )
    fig.update_yaxes(
        title_text="req/s",
        row=1,
        col=1,
        secondary_y=True,
        showgrid=False,
        title_font_color="#a89a2a",
        rangemode="tozero",
        tickmode="auto",
    )
    fig.update_xaxes(showticklabels=True)  # every row: times are read on the row at hand
    fig.update_xaxes(title_text="seconds into the measured window", row=len(rows), col=1)
    styled(
        fig,
        120 + 190 * len(rows),
        hovermode="x unified",
        margin={"l": 60, "r": 60, "t": 30, "b": 45},
    )
    for note in fig.layout.annotations:  # row titles on the left, legends on the right
        note.update(x=0, xanchor="left")
    for key, legend_row in legends.items():
        domain = fig.get_subplot(legend_row, 1).yaxis.domain
        fig.update_layout(
            {
                key: {
                    "orientation": "h",
                    "x": 1,
                    "xanchor": "right",
                    "y": domain[1],
                    "yanchor": "bottom",
                    "yref": "paper",
                }
            }
        )
    return fig


def server_histogram(name: str, hist: Mapping[str, Any]) -> go.Figure:
    """A scraped histogram with no client twin, as a bar per bucket (counts during the run)."""
    _, counts, labels = server_buckets(hist)
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=counts,
            marker_color=YELLOW,
            name=html.escape(name),
            hovertemplate="%{x}: %{y:.0f}<extra></extra>",
        )
    )
    fig.update_layout(title={"text": html.escape(name), "x": 0.01})
    fig.update_xaxes(type="category", title_text="ms (bucket: le)")
    fig.update_yaxes(title_text="count during the run")
    return styled(fig, 320)


def outcomes(
    end_reasons: Mapping[str, int], errors: Mapping[str, int], cancelled: int = 0
) -> go.Figure:
    """How every measured request ended: completed by end reason, failed by error kind,
    and cancelled on purpose (its own outcome)."""
    names = [f"completed: {html.escape(k)}" for k in end_reasons]
    names += [f"failed: {html.escape(k)}" for k in errors]
    counts = [*end_reasons.values(), *errors.values()]
    colors = [GREEN] * len(end_reasons) + [RED] * len(errors)
    if cancelled:
        names.append(CANCELLED)
        counts.append(cancelled)
        colors.append(GREY)
    fig = go.Figure(
        go.Bar(
            y=names,
            x=counts,
            orientation="h",
            marker_color=colors,
            text=counts,
            textposition="auto",
            hovertemplate="%{y}: %{x}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="requests")
    return styled(fig, 90 + 32 * max(len(names), 1), margin={"l": 200, "r": 30, "t": 20, "b": 45})


SWEEP_PANELS = (
    ("TTFT (ms)", (("ttft_ms", "p50"), ("ttft_ms", "p99"))),
    ("ITL p50 (ms)", (("itl_ms", "p50"),)),
    ("TPOT p50 (ms)", (("tpot_ms", "p50"),)),
    ("E2E p99 (ms)", (("e2e_ms", "p99"),)),
)


def sweep_curves(docs: Sequence[Mapping[str, Any]], saturation: int | None) -> go.Figure:
    """Latency against achieved request throughput, one panel per metric, points in
    throughput order, the saturation step starred on every panel."""
    order = sorted(range(len(docs)), key=lambda i: docs[i]["request_throughput"])
    xs = [docs[i]["request_throughput"] for i in order]
    labels = [html.escape(str(docs[i]["label"])) for i in order]
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=[t for t, _ in SWEEP_PANELS],
        horizontal_spacing=0.08,
        vertical_spacing=0.16,
    )
    for n, (_, lines) in enumerate(SWEEP_PANELS):
        row, col = n // 2 + 1, n % 2 + 1
        for (metric, stat), color in zip(lines, (BLUE, RED), strict=False):
            ys = [docs[i][metric][stat] for i in order]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=f"{metric.split('_')[0].upper()} {stat}",
                    line={"color": color},
                    customdata=labels,
                    showlegend=n == 0 or len(lines) > 1,
                    hovertemplate="%{customdata}: %{x:.2f} req/s, %{y:.1f} ms<extra></extra>",
                ),
                row=row,
                col=col,
            )
            if saturation is not None and ys[order.index(saturation)] is not None:
                fig.add_trace(
                    go.Scatter(
                        x=[docs[saturation]["request_throughput"]],
                        y=[docs[saturation][metric][stat]],
                        mode="markers",
                        showlegend=False,
                        marker={"symbol": "star", "size": 16, "color": "#000"},
                        hovertemplate="saturation point<extra></extra>",
                    ),
                    row=row,
                    col=col,
                )
        if saturation is not None:
            fig.add_vline(
                x=docs[saturation]["request_throughput"],
                row=row,
                col=col,
                line={"color": "#000", "dash": "dot", "width": 1},
            )
        fig.update_xaxes(title_text="achieved requests/s", row=row, col=col)
        fig.update_yaxes(title_text="ms", rangemode="tozero", row=row, col=col)
    return styled(fig, 620, hovermode="closest")
