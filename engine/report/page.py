"""The one page every HTML view is built on: its style, Plotly's bundle once in the head,
each chart a div plus its JSON, drawn by one script at the end, and the tables of facts.

A page is a self-contained file: it opens offline and makes no network request at all
(checked in a real browser by tests/test_loadtest_html.py). Every string that came from a
server or a user is escaped here or by the caller: shown, never interpreted.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from engine.report.figures import plotly_js, to_json

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["STYLE", "Charts", "flatten", "halves", "kv", "page"]

STYLE = """
:root{--fg:#222;--muted:#667;--line:#dde;--soft:#f5f6f8;--ok:#1b7a2e;--bad:#b3261e}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:var(--fg)}
main{max-width:1280px;margin:0 auto;padding:20px 32px 64px}
h1{font-size:24px;margin:0 0 2px}h2{font-size:20px;border-bottom:2px solid var(--line);
padding-bottom:4px;margin:36px 0 10px}h3{font-size:16px;margin:24px 0 6px}
.sub,.note,.dim,.ci{color:var(--muted)}.ci{font-size:85%}nav{margin:10px 0 4px}
nav a{margin-right:14px;color:#2a5db0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:10px;
margin:14px 0}.card{background:var(--soft);border-radius:8px;padding:8px 12px}
.card .k{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.05em}
.card .v{font-size:17px;font-weight:600;font-variant-numeric:tabular-nums}
.card.bad .v,.bad,.worse{color:var(--bad)}.bad{font-weight:600}
.card.ok .v,.better{color:var(--ok)}
.verdict{padding:9px 14px;border-radius:6px;border-left:5px solid;margin:10px 0}
.verdict.ok{background:#eef7ef;border-color:var(--ok)}
.verdict.bad{background:#fdeeee;border-color:var(--bad);font-weight:600}
table{border-collapse:collapse;margin:6px 0 16px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:right;vertical-align:top}
th{background:var(--soft);font-weight:600}th:first-child,td:first-child{text-align:left}
tr.mark td{background:#fff6d5;font-weight:600}
table.kv td{text-align:left}table.kv td:first-child{color:var(--muted);white-space:nowrap}
td.msg,th.msg{text-align:left;max-width:640px;overflow-wrap:anywhere}
code,table.kv td:first-child{font-family:ui-monospace,'SFMono-Regular',Menlo,monospace;
font-size:12.5px}.chart{width:100%;min-height:120px;margin:2px 0 18px}
.cols{display:flex;flex-wrap:wrap;gap:0 40px}.grid2{display:grid;gap:0 24px;
grid-template-columns:repeat(auto-fit,minmax(480px,1fr))}
details>summary{cursor:pointer}details>summary h2{display:inline-block;border:0}
"""
PLOT_CONFIG = {
    "responsive": True,
    "displaylogo": False,
    "toImageButtonOptions": {"format": "png", "scale": 2},
}
# Draws every chart, then counts the rendered ones on <body> (what a test or a reader of the
# DOM can wait for). A chart that fails is logged as an error, never silently blank.
RENDER = """const CHARTS=JSON.parse(document.getElementById('charts').textContent);
Promise.all(Object.entries(CHARTS).map(([id,f])=>Plotly.newPlot(id,f.data,f.layout,CONFIG)))
.then(()=>{const all=[...document.querySelectorAll('.chart')];document.body.dataset
.chartsRendered=String(all.filter(d=>d.querySelector('.main-svg')).length)})
.catch(err=>console.error('chart failed',err));"""

e = html.escape


class Charts:
    """The page's figures in order: each `add` gives the div, `script` the data to draw."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}

    def add(self, figure: Any, name: str) -> str:
        chart_id = f"chart-{len(self.figures)}"
        self.figures[chart_id] = figure.to_plotly_json()
        return f'<div class="chart" id="{chart_id}" data-chart="{e(name)}"></div>'

    def script(self) -> str:
        # JSON inside <script>: no "<" may close the tag early, whatever a label holds.
        data = to_json(self.figures).replace("<", "\\u003c")
        return (
            f'<script type="application/json" id="charts">{data}</script>'
            f"<script>const CONFIG={to_json(PLOT_CONFIG)};{RENDER}</script>"
        )


def page(title: str, sub: str, nav: Sequence[tuple[str, str]], body: str, charts: Charts) -> str:
    """A whole page: `title` (text), `sub` (text under it), `nav` (anchor, text) links and
    `body` (HTML), with the charts drawn at the end."""
    links = "".join(f'<a href="#{a}">{e(t)}</a>' for a, t in nav)
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport'"
        f" content='width=device-width,initial-scale=1'><title>{e(title)}</title>"
        f"<style>{STYLE}</style><script>{plotly_js()}</script></head><body><main>"
        f"<h1>{e(title)}</h1><p class='sub'>{e(sub).replace(chr(10), '<br>')}</p>"
        f"<nav>{links}</nav>{body}</main>{charts.script()}</body></html>\n"
    )


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_value, value)) or "-"
    if isinstance(value, dict) and not value:
        return "-"
    return str(value) or "-"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as `a.b.c -> text` rows: readable, and nothing is hidden."""
    rows: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            rows.update(flatten(value, f"{prefix}{key}."))
        else:
            rows[f"{prefix}{key}"] = _value(value)
    return rows


def kv(rows: Mapping[str, str], cls: str = "kv") -> str:
    """A two-column table of facts, both columns escaped."""
    body = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows.items())
    return f'<table class="{cls}">{body}</table>'


def halves(rows: Mapping[str, str]) -> str:
    """A long two-column table as two tables side by side: half the scrolling."""
    items = list(rows.items())
    cut = (len(items) + 1) // 2
    return f'<div class="cols">{kv(dict(items[:cut]))}{kv(dict(items[cut:]))}</div>'
