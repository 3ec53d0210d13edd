"""`--html report.html`: one self-contained file, plots embedded as base64 PNG.

Figures are drawn with `matplotlib.figure.Figure` and the Agg canvas directly, never pyplot,
so no GUI backend or global state is touched. No external URL appears in the page: it
opens offline, and a small inline script marks each plot once the browser has decoded it.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.loadtest.metrics import concurrency_curve, ended_s, token_times, values
from engine.loadtest.report import (
    COLUMNS,
    LATENCIES,
    counts_text,
    reconnects_text,
    requests_text,
    retry_after_text,
    shown,
    statuses_text,
    tokens_text,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from engine.loadtest.result import BenchResult

STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}.bad{color:#b00;font-weight:bold}
.ok{color:#070}img.plot{max-width:100%;display:block;margin:8px 0}th.msg,td.msg{text-align:left}"""
SCRIPT = """window.addEventListener('load',()=>{let n=0;for(const i of
document.querySelectorAll('img.plot')){if(i.complete&&i.naturalWidth>0){i.dataset.rendered='1';
n++}}document.body.dataset.plotsRendered=String(n)});"""


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _img(fig: Figure, name: str) -> str:
    return (f'<img class="plot" id="{name}" alt="{html.escape(name)}" '
            f'src="data:image/png;base64,{_png(fig)}">')


# The CDF panels; a panel's second metric is drawn beside the first when it differs (TTFT to
# text: after reasoning or tool calls it is later than the first token).
CDF_PANELS = (("TTFT", "ttft_ms", "ttft_text_ms"), ("ITL", "itl_ms", None),
              ("TPOT", "tpot_ms", None), ("E2E", "e2e_ms", None))


def ttft_histogram(result: BenchResult) -> Figure:
    fig = Figure(figsize=(10, 3.2))
    ax = fig.add_subplot()
    ttft = values(result.measured, "ttft_ms")
    if ttft.size:
        ax.hist(ttft, bins=min(80, max(10, ttft.size // 5)), color="#4477aa")
        for q, style in ((50, "-"), (99, "--")):
            ax.axvline(float(np.percentile(ttft, q)), color="#cc3311", linestyle=style,
                       label=f"p{q}")
        ax.legend()
    ax.set(title="Time to first token (any kind)", xlabel="ms", ylabel="requests")
    return fig


def latency_cdfs(result: BenchResult) -> Figure:
    fig = Figure(figsize=(10, 6))
    axes = fig.subplots(2, 2).ravel()
    labels = {key: label for label, key in LATENCIES}
    for ax, (title, metric, beside) in zip(axes, CDF_PANELS, strict=True):
        first = np.sort(values(result.measured, metric))
        curves = [(metric, first, "#228833")]
        if beside is not None:
            other = np.sort(values(result.measured, beside))
            if other.size and not np.array_equal(other, first):
                curves.append((beside, other, "#aa3377"))
        for key, data, color in curves:
            if data.size:
                ax.plot(data, np.arange(1, data.size + 1) / data.size, color=color,
                        label=labels[key])
        if len(curves) > 1:
            ax.legend(loc="lower right")
        ax.set(title=f"{title} CDF", xlabel="ms", ylabel="fraction", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def over_time(result: BenchResult) -> Figure:
    records = result.measured
    fig = Figure(figsize=(10, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    tokens = token_times(r for r in records if r.ok)
    ends = np.array([ended_s(r) for r in records if r.ok])
    span = max(float(tokens.max()) if tokens.size else 0.0,
               float(ends.max()) if ends.size else 0.0, 1e-3)
    width = max(span / 60, 0.1)
    bins = np.arange(0.0, span + width, width)
    if tokens.size:
        counts, _ = np.histogram(tokens, bins)
        top.step(bins[:-1], counts / width, where="post", label="output tokens/s")
        top.legend(loc="upper left")
    if ends.size:
        twin = top.twinx()
        done, _ = np.histogram(ends, bins)
        twin.step(bins[:-1], done / width, where="post", color="#ee7733",
                  label="completed req/s")
        twin.set_ylabel("requests/s")
        twin.legend(loc="upper right")
    top.set(title="Throughput over time", ylabel="tokens/s")
    times, level = concurrency_curve(records)
    if times.size:  # sampled on a grid: a closed loop's instant dips would fill the plot
        grid = np.linspace(float(times[0]), float(times[-1]), 400)
        at = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, level.size - 1)
        bottom.plot(grid, level[at], color="#aa3377")
    bottom.set(title="Requests in flight (from intended start)", xlabel="s into the window",
               ylabel="in flight")
    fig.tight_layout()
    return fig


def _stats_table(doc: dict[str, Any]) -> str:
    head = "".join(f"<th>{c.replace('p999', 'p99.9')}</th>" for c in COLUMNS)
    rows = []
    for label, key in LATENCIES:
        row = doc.get(key)
        if shown(row, key):
            cells = "".join(f"<td>{'-' if row[c] is None else f'{row[c]:.2f}'}</td>"
                            for c in COLUMNS)
            rows.append(f"<tr><td>{label}</td>{cells}</tr>")
    return f"<table><tr><th>ms</th>{head}</tr>{''.join(rows)}</table>"


def _facts(doc: dict[str, Any]) -> str:
    good = doc["goodput"]
    facts = {
        "mode": doc["mode"], "measured": f"{doc['duration_s']:.2f} s",
        "requests": requests_text(doc),
        "request throughput": f"{doc['request_throughput']:.2f} req/s",
        "output token throughput": f"{doc['output_token_throughput']:.1f} tok/s",
        "tokens": tokens_text(doc),
        "goodput": "-" if good is None else f"{good['request_rate']:.2f} req/s "
                                            f"({good['fraction']:.1%}, SLO {good['slo']})",
        "end reasons": counts_text(doc["end_reasons"]) or "-",
        "errors": counts_text(doc["errors"]) or "none",
        "endpoint": f"{doc['config']['base_url']} ({doc['config']['endpoint']})",
    }
    if doc["reconnects"]:
        facts["reconnects"] = reconnects_text(doc)
    if (waits := retry_after_text(doc)) is not None:
        facts["Retry-After"] = waits
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in facts.items())
    return f"<table>{rows}</table>"


def _errors_table(doc: dict[str, Any]) -> str:
    """Why requests failed, per kind; every server-supplied string is escaped."""
    if not doc["error_details"]:
        return ""
    rows = []
    for kind, detail in doc["error_details"].items():
        messages = "<br>".join(html.escape(m) for m in detail["messages"]) or "-"
        rows.append(f"<tr><td>{html.escape(kind)}</td><td>{detail['count']}</td>"
                    f"<td>{html.escape(statuses_text(detail['statuses']))}</td>"
                    f'<td>{detail["first_at_s"]:.2f}</td><td class="msg">{messages}</td></tr>')
    head = ("<tr><th>error</th><th>count</th><th>HTTP status</th><th>first at (s)</th>"
            '<th class="msg">example messages</th></tr>')
    return f'<table class="errors">{head}{"".join(rows)}</table>'


def section(result: BenchResult, doc: dict[str, Any], n: int) -> str:
    client = doc["client"]
    cls = "bad" if client["bottleneck"] else "ok"
    title = html.escape(doc.get("label") or f"run {n + 1}")
    return "\n".join([
        f"<h2>{title}</h2>", _facts(doc), _errors_table(doc), _stats_table(doc),
        f'<p class="{cls}">{html.escape(client["verdict"])}</p>',
        _img(ttft_histogram(result), f"ttft-histogram-{n}"),
        _img(latency_cdfs(result), f"latency-cdf-{n}"),
        _img(over_time(result), f"throughput-concurrency-{n}"),
    ])


def write_html(results: Sequence[BenchResult], docs: Sequence[dict[str, Any]],
               path: str | Path) -> None:
    body = "\n".join(section(r, d, i) for i, (r, d) in enumerate(zip(results, docs,
                                                                      strict=True)))
    platform = html.escape(str(docs[0]["platform"])) if docs else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>stream-engine bench"
            f"</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
            f"<h1>stream-engine bench</h1>{body}<h2>platform</h2><p><code>{platform}</code>"
            f"</p></body></html>\n")
    Path(path).write_text(page, encoding="utf-8")
