"""`stream-engine compare --html`: the comparison as one self-contained page, in the style of
every page (engine/report/page.py: Plotly's bundle once, no URL fetched), so it opens
offline and can be kept as a CI artifact: each run's value with its interval under it, and
a bar chart of the changes."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from engine.report.compare import (
    change_text,
    column_names,
    comparison_notes,
    fmt,
    legend,
    style_of,
    verdict,
)
from engine.report.figures import go, styled
from engine.report.page import Charts, page

if TYPE_CHECKING:
    from engine.loadtest.compare import Comparison, Report

__all__ = ["html_page"]

CSS_CLASS = {"bold red": "bad", "red": "worse", "green": "better", "dim": "dim"}


def _html_table(report: Report, comp: Comparison) -> str:
    esc = html.escape
    names = column_names(report.files)
    head = (
        "<tr><th>metric</th>"
        + "".join(
            f"<th>{esc(n)}{' (baseline)' if i == 0 else ''}</th>" + ("<th>change</th>" if i else "")
            for i, n in enumerate(names)
        )
        + "</tr>"
    )
    body = []
    for row in comp.rows:
        metric = row.metric
        tds = [f"<td>{esc(metric.name)} ({esc(metric.unit)})</td>"]
        for i, cell in enumerate(row.cells):
            ci = (
                f'<br><span class="ci">[{fmt(metric, cell.interval[0])}, '
                f"{fmt(metric, cell.interval[1])}]</span>"
                if cell.interval
                else ""
            )
            tds.append(f"<td>{fmt(metric, cell.value)}{ci}</td>")
            if i:
                css = CSS_CLASS[style_of(metric, cell)]
                tds.append(f'<td class="{css}">{esc(change_text(metric, cell))}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _chart(report: Report, comp: Comparison, charts: Charts) -> str:
    """Bars of the candidates' changes in percent (fractions, in points, are left out), the
    threshold drawn at plus and minus."""
    rows = [row for row in comp.rows if row.metric.kind != "fraction"]
    fig = go.Figure()
    for i, name in enumerate(column_names(report.files)[1:], start=1):
        cells = [row.cells[i] for row in rows]
        fig.add_bar(
            name=html.escape(name),
            x=[row.metric.name for row in rows],
            y=[cell.change_pct for cell in cells],
            text=[
                change_text(row.metric, c).replace(" REGRESSION", "")
                for row, c in zip(rows, cells, strict=True)
            ],
            marker_line_color=["#b00" if c.regression else "rgba(0,0,0,0)" for c in cells],
            marker_line_width=3,
        )
    for level in (report.threshold_pct, -report.threshold_pct):
        fig.add_hline(y=level, line_dash="dot", line_color="#999")
    styled(
        fig,
        420,
        barmode="group",
        title={
            "text": f"change against {html.escape(column_names(report.files)[0])} (%)",
            "x": 0.01,
        },
    )
    fig.update_yaxes(title_text="change (%)")
    return charts.add(fig, f"changes-{comp.position}")


def html_page(report: Report) -> str:
    """The comparison as one self-contained page: plotly.js is embedded once, no URL is
    fetched, so it opens offline and can be kept as a CI artifact."""
    esc = html.escape
    charts = Charts()
    parts = []
    for comp in report.comparisons:
        if report.sweep:
            parts.append(f"<h2>sweep step {comp.position + 1}: {esc(' / '.join(comp.labels))}</h2>")
        parts.append(_html_table(report, comp))
        parts.extend(f'<p class="note">note: {esc(n)}</p>' for n in comparison_notes(comp))
        parts.append(_chart(report, comp, charts))
    parts.append(f'<p class="dim">{esc(legend(report))}; bracketed: the interval.</p>')
    parts.extend(f'<p class="note">note: {esc(n)}</p>' for n in report.notes)
    css = "bad" if report.regressions else "better"
    parts.append(f'<p class="{css}">{esc(verdict(report))}</p>')
    sub = f"baseline {report.files[0]}; candidates {', '.join(report.files[1:])}"
    return page("stream-engine compare", sub, (), "".join(parts), charts)
