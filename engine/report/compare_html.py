"""`stream-engine compare --html`: the comparison as one self-contained page, in the style of
every page (engine/report/page.py: Plotly's bundle once, no URL fetched), so it opens
offline and can be kept as a CI artifact: each run's value with its interval under it, and
a bar chart of the changes."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from engine.report.compare import (
    change_text,
    comparison_notes,
    fmt,
    judgement,
    legend,
    verdict,
)
from engine.report.figures import GREEN, GREY, RED, go, styled
from engine.report.page import Charts, page

if TYPE_CHECKING:
    from engine.loadtest.compare import Comparison, Report
    from engine.report.compare import Judgement

__all__ = ["html_page"]

CSS_CLASS: dict[Judgement, str] = {
    "regression": "bad",
    "worse": "worse",
    "better": "better",
    "noise": "dim",
}
# The chart's bars in the table's colours: worse red, better green, inside the noise grey.
BAR_COLOUR: dict[Judgement, str] = {
    "regression": RED,
    "worse": RED,
    "better": GREEN,
    "noise": GREY,
}
BAR_WORDS: dict[Judgement, str] = {
    "regression": "regression",
    "worse": "worse, outside the noise",
    "better": "better, outside the noise",
    "noise": "inside the noise",
}
PATTERNS = ("", "/", "x", ".", "-", "+")  # several candidates: told apart by their hatching


def _html_table(report: Report, comp: Comparison) -> str:
    esc = html.escape
    names = report.names
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
                css = CSS_CLASS[judgement(metric, cell)]
                tds.append(f'<td class="{css}">{esc(change_text(metric, cell))}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _chart(report: Report, comp: Comparison, charts: Charts) -> str:
    """Bars of the candidates' changes in percent (fractions, in points, are left out), each
    coloured by its judgement as the table is (worse red, better green, inside the noise
    grey; a regression outlined), the threshold drawn at plus and minus."""
    rows = [row for row in comp.rows if row.metric.kind != "fraction"]
    fig = go.Figure()
    candidates = report.names[1:]
    for i, name in enumerate(candidates, start=1):
        cells = [row.cells[i] for row in rows]
        judged = [judgement(row.metric, c) for row, c in zip(rows, cells, strict=True)]
        fig.add_bar(
            name=html.escape(name),
            x=[row.metric.name for row in rows],
            y=[cell.change_pct for cell in cells],
            text=[
                change_text(row.metric, c).replace(" REGRESSION", "")
                for row, c in zip(rows, cells, strict=True)
            ],
            customdata=[BAR_WORDS[j] for j in judged],
            hovertemplate=f"{html.escape(name)}: %{{x}} %{{y:+.1f}} %% (%{{customdata}})"
            "<extra></extra>",
            marker={
                "color": [BAR_COLOUR[j] for j in judged],
                "line": {
                    "color": ["#222" if j == "regression" else "rgba(0,0,0,0)" for j in judged],
                    "width": 2,
                },
                "pattern": {"shape": PATTERNS[(i - 1) % len(PATTERNS)]},
            },
            showlegend=len(candidates) > 1,
        )
    key: tuple[Judgement, ...] = ("worse", "better", "noise")
    for word in key:  # the colours' key, in the legend
        fig.add_bar(x=[None], y=[None], name=BAR_WORDS[word], marker_color=BAR_COLOUR[word])
    for level in (report.threshold_pct, -report.threshold_pct):
        fig.add_hline(y=level, line_dash="dot", line_color="#999")
    styled(
        fig,
        420,
        barmode="group",
        title={
            "text": f"change against {html.escape(report.names[0])} (%)",
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
    runs = [
        f"{name} ({path})" if name != path else name
        for name, path in zip(report.names, report.files, strict=True)
    ]
    sub = f"baseline {runs[0]}; candidates {', '.join(runs[1:])}"
    return page("stream-engine compare", sub, (), "".join(parts), charts)
