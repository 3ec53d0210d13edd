"""`report.html`: one self-contained, interactive page per run or sweep.

The page is a function of the result objects and documents (engine/report/page.py gives it
its style, the Plotly bundle once and the script that draws the charts); `write_html` only
writes it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.loadtest.config import OPEN_LOOP_ONLY
from engine.loadtest.metrics import meets_slo, values
from engine.loadtest.result import SATURATION_RULE, saturation_index
from engine.report import charts
from engine.report.page import Charts, flatten, halves, kv, page
from engine.report.text import (
    COLUMNS,
    LATENCIES,
    client_state,
    counts_text,
    machine_text,
    reconnects_text,
    requests_text,
    retry_after_text,
    shown,
    statuses_text,
    tokens_text,
    warmup_text,
)
from engine.report.workload_html import has_workload, slices_section, workload_section

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from engine.loadtest.result import BenchResult

__all__ = ["render_html", "write_html"]

DISTRIBUTIONS = (
    ("TTFT", "ttft_ms", "requests", "server_ttft_s"),
    ("TTFT to text", "ttft_text_ms", "requests", None),
    ("ITL", "itl_ms", "gaps", "server_itl_s"),
    ("TPOT", "tpot_ms", "requests", None),
    ("E2E", "e2e_ms", "requests", "server_e2e_s"),
)

e = html.escape


def _ms(value: float | None) -> str:
    """Two decimals everywhere a latency is shown (cards, tables, legends): one number."""
    return "-" if value is None else f"{value:.2f} ms"


def _pair(row: Mapping[str, Any]) -> str:
    """p50 / p99 in one card."""
    if row["p50"] is None:
        return "-"
    return f"{row['p50']:.2f} / {row['p99']:.2f} ms"


def _shape(doc: dict[str, Any]) -> str:
    config = doc["config"]
    if doc["mode"] == "open":
        burst = f", burstiness {config['burstiness']:g}" if config["burstiness"] != 1 else ""
        load = f"open loop, {config['rate']:g} req/s {config['arrival']}{burst}"
    else:
        load = f"closed loop, {config['concurrency']} users"
    return (
        f"{load}, {doc['duration_s']:.1f} s measured, {config['workers']} worker(s); "
        f"{config['endpoint']} at {config['base_url']}, model {config['model']}"
    )


def _cards(doc: dict[str, Any]) -> str:
    good = doc.get("goodput")
    state, bad = client_state(doc)
    cut = doc.get("cancelled")
    cards = [
        (
            "requests",
            f"{doc['completed']} completed / {doc['failed']} failed"
            + ("" if cut is None else f" / {cut['count']} cancelled"),
            "bad" if doc["failed"] else "",
        ),
        ("throughput", f"{doc['request_throughput']:.2f} req/s", ""),
        ("output tokens", f"{doc['output_token_throughput']:.0f} tok/s", ""),
        ("TTFT p50 / p99", _pair(doc["ttft_ms"]), ""),
        ("ITL p50", _ms(doc["itl_ms"]["p50"]), ""),
        ("TPOT p50", _ms(doc["tpot_ms"]["p50"]), ""),
        ("E2E p99", _ms(doc["e2e_ms"]["p99"]), ""),
    ]
    if good is not None:
        cards.append(("goodput", f"{good['request_rate']:.2f} req/s ({good['fraction']:.0%})", ""))
    cards.append(("client", state, "bad" if bad else "ok"))
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card {c}"><div class="k">{e(k)}</div><div class="v">{e(v)}</div></div>'
            for k, v, c in cards
        )
        + "</div>"
    )


def _verdict(doc: dict[str, Any]) -> str:
    """The client's verdict, after why the run ended early when it did."""
    client = doc["client"]
    halt = doc.get("interrupted")  # absent from documents written before it existed
    stopped = (
        f'<p class="verdict bad">Interrupted ({e(halt["by"])}): {e(halt["message"])}; '
        "what was measured is below.</p>"
        if halt
        else ""
    )
    css = "bad" if client_state(doc)[1] else "ok"
    return stopped + f'<p class="verdict {css}">{e(client["verdict"])}</p>'


def _percentiles(doc: dict[str, Any]) -> str:
    head = "".join(f"<th>{c.replace('p999', 'p99.9')}</th>" for c in COLUMNS)
    rows = []
    for label, key in LATENCIES:
        row = doc.get(key)
        if shown(row, key):
            cells = "".join(
                f"<td>{'-' if row[c] is None else f'{row[c]:.2f}'}</td>" for c in COLUMNS
            )
            rows.append(f"<tr><td>{label}</td>{cells}<td>{row['count']}</td></tr>")
    if not rows:
        return ""
    return f"<table><tr><th>ms</th>{head}<th>n</th></tr>{''.join(rows)}</table>"


def _distributions(result: BenchResult, doc: dict[str, Any], charts_: Charts) -> str:
    slo = doc["config"].get("slo") or {}
    server = (doc.get("server_metrics") or {}).get("histograms") or {}
    parts = []
    ttft = np.sort(values(result.measured, "ttft_ms"))
    if not ttft.size and not values(result.measured, "e2e_ms").size:
        return '<p class="note">No completed request: no latency to show.</p>'
    for title, metric, unit, twin in DISTRIBUTIONS:
        data = values(result.measured, metric)
        if metric == "ttft_text_ms" and data.size and np.array_equal(np.sort(data), ttft):
            parts.append(
                '<p class="note">TTFT to text equals TTFT for every request: no '
                "reasoning or tool call came before the text.</p>"
            )
            continue
        if not data.size:
            parts.append(f'<p class="note">{title}: no values in this run.</p>')
            continue
        note = " (each request's worst gap)" if metric == "itl_ms" else ""
        figure = charts.distribution(
            title, unit, data, slo.get(metric), note, server.get(twin) if twin else None
        )
        parts.append(charts_.add(figure, f"{metric}-distribution"))
    return "".join(parts)


def _goodput(result: BenchResult, doc: dict[str, Any]) -> str:
    good = doc.get("goodput")
    if good is None:
        return ""
    measured = result.measured
    total = doc["completed"] + doc["failed"] or 1  # a cancelled request is in no share
    rows = []
    for metric, limit in good["slo"].items():
        met = sum(meets_slo(r, {metric: limit}) for r in measured)
        what = "worst gap" if metric == "itl_ms" else metric.removesuffix("_ms").upper()
        rows.append(
            f"<tr><td>{e(what)} &le; {limit:g} ms</td><td>{met}</td>"
            f"<td>{met / total:.1%}</td><td></td></tr>"
        )
    rows.append(
        f'<tr class="mark"><td>all objectives (goodput)</td><td>{good["requests"]}</td>'
        f"<td>{good['fraction']:.1%}</td><td>{good['request_rate']:.2f} req/s</td></tr>"
    )
    share = "share of measured" + (" (cancelled excepted)" if doc.get("cancelled") else "")
    return (
        "<h3>Goodput against the SLOs</h3><table><tr><th>objective</th><th>requests "
        f"met</th><th>{share}</th><th>rate</th></tr>" + "".join(rows) + "</table>"
        '<p class="note">A failed request meets no objective; a cancelled one is not '
        "counted; the CDFs above count completed requests only.</p>"
    )


def _errors_table(doc: dict[str, Any]) -> str:
    """Why requests failed, per kind; every server-supplied string is escaped."""
    if not doc.get("error_details"):
        return ""
    rows = []
    for kind, detail in doc["error_details"].items():
        messages = "<br>".join(e(m) for m in detail["messages"]) or "-"
        ids = ", ".join(e(i) for i in detail.get("request_ids", [])) or "-"
        rows.append(
            f"<tr><td>{e(kind)}</td><td>{detail['count']}</td>"
            f"<td>{e(statuses_text(detail['statuses']))}</td>"
            f'<td>{detail["first_at_s"]:.2f}</td><td class="msg">{messages}</td>'
            f'<td class="msg"><code>{ids}</code></td></tr>'
        )
    head = (
        "<tr><th>error</th><th>count</th><th>HTTP status</th><th>first at (s)</th>"
        '<th class="msg">example messages</th><th class="msg">request ids</th></tr>'
    )
    return f'<table class="errors">{head}{"".join(rows)}</table>'


def _ended(doc: dict[str, Any], charts_: Charts) -> str:
    facts = {
        "requests": requests_text(doc),
        "tokens": tokens_text(doc),
        "end reasons": counts_text(doc.get("end_reasons", {})) or "-",
        "errors": counts_text(doc["errors"]) or "none",
    }
    if doc.get("reconnects"):
        facts["reconnects"] = reconnects_text(doc)
    if (waits := retry_after_text(doc)) is not None:
        facts["Retry-After"] = waits
    chart = ""
    cut = (doc.get("cancelled") or {}).get("count", 0)
    if doc.get("end_reasons") or doc["errors"] or cut:
        figure = charts.outcomes(doc.get("end_reasons", {}), doc["errors"], cut)
        chart = charts_.add(figure, "outcomes")
    return chart + kv(facts) + _errors_table(doc)


def _client(doc: dict[str, Any]) -> str:
    client = doc["client"]
    rows = [
        f"<tr><td>{w['worker']}</td><td>{e(str(w['loop']))}</td>"
        f"<td>{w['busy_cpu_percent']:.0f}%</td><td>{w['cpu_percent']:.0f}%</td>"
        f"<td>{_ms(w['loop_lag_ms']['p99'])}</td><td>{_ms(w['read_delay_ms']['p99'])}</td>"
        f"<td>{e(w['canary_error'] or '-')}</td></tr>"
        for w in client["workers"]
    ]
    table = (
        (
            "<table><tr><th>worker</th><th>loop</th><th>busy CPU</th><th>CPU</th><th>loop "
            "lag p99</th><th>read delay p99 (canary)</th><th>canary error</th></tr>"
            + "".join(rows)
            + "</table>"
        )
        if rows
        else ""
    )
    lag, delay = client["loop_lag_ms"], client["read_delay_ms"]
    facts = {
        "read delay (canary) p50 / p99 / max": (
            f"{_ms(delay['p50'])} / {_ms(delay['p99'])} / {_ms(delay['max'])}"
            if delay["count"]
            else "not measured"
        ),
        "loop lag p50 / p99 / max": f"{_ms(lag['p50'])} / {_ms(lag['p99'])} / {_ms(lag['max'])}",
        "schedule lag p50 / p99 / max": " / ".join(
            _ms(doc["schedule_lag_ms"][k]) for k in ("p50", "p99", "max")
        ),
    }
    if (machine := machine_text(doc)) is not None:
        facts["machine CPU"] = machine
    if "warmup" in doc:
        facts["warm-up"] = warmup_text(doc)
    return _verdict(doc) + kv(facts) + table


def _server_extra(doc: dict[str, Any], charts_: Charts) -> str:
    """Scraped histograms with no client twin, and the scrape's own scalar facts."""
    metrics = doc.get("server_metrics") or {}
    twins = set(charts.SERVER_TWINS)
    plots = [
        charts_.add(charts.server_histogram(name, hist), "server-histogram")
        for name, hist in (metrics.get("histograms") or {}).items()
        if name not in twins
    ]
    facts = {k: v for k, v in metrics.items() if k not in ("series", "histograms")}
    if isinstance(facts.get("raw_names"), list):  # a hundred names: counted, not listed
        facts["raw_names"] = f"{len(facts['raw_names'])} metric families (in result.json)"
    return (kv(flatten(facts)) if facts else "") + (
        f'<div class="grid2">{"".join(plots)}</div>' if plots else ""
    )


def run_body(result: BenchResult, doc: dict[str, Any], charts_: Charts, h: str, anchor: str) -> str:
    """One run's sections under heading level `h` (h2 alone, h3 inside a sweep)."""
    metrics = doc.get("server_metrics") or {}
    series = metrics.get("series") or {}
    server = _server_extra(doc, charts_)
    where = " and the server's scraped series" if series else ""
    timeline = (
        '<p class="note">No request in the measured window.</p>'
        if not result.measured
        else charts_.add(
            charts.timeline(result.measured, doc.get("error_details") or {}, series), "timeline"
        )
    )
    return "".join(
        [
            _cards(doc),
            _verdict(doc),
            f'<{h} id="{anchor}latency">Latency</{h}>',
            _percentiles(doc),
            _distributions(result, doc, charts_),
            _goodput(result, doc),
            (
                f'<{h} id="{anchor}workload">Workload</{h}>'
                + workload_section(result, doc, charts_)
                if has_workload(doc)
                else ""
            ),
            (
                f'<{h} id="{anchor}time">Over time</{h}><p class="note">Throughput, requests in '
                f"flight, failures, schedule lag{where} on one time axis: zoom one, zoom all.</p>"
            ),
            timeline,
            (
                f'<{h} id="{anchor}slices">Time slices</{h}>' + slices_section(doc, charts_)
                if doc.get("slices")
                else ""
            ),
            f'<{h} id="{anchor}server">Server metrics</{h}>{server}' if server else "",
            f'<{h} id="{anchor}ended">How requests ended</{h}>',
            _ended(doc, charts_),
            f'<{h} id="{anchor}client">Client self-check</{h}>',
            _client(doc),
        ]
    )


def _sweep(docs: Sequence[dict[str, Any]], charts_: Charts) -> str:
    point = saturation_index(docs)
    head = (
        "<tr><th>run</th><th>req/s</th><th>out tok/s</th><th>TTFT p50</th><th>TTFT p99"
        "</th><th>ITL p50</th><th>TPOT p50</th><th>E2E p99</th><th>failed</th>"
        "<th>goodput/s</th><th>client</th></tr>"
    )
    rows = []
    for i, doc in enumerate(docs):
        good = doc.get("goodput")
        cells = [
            f'<a href="#run{i}-">{e(str(doc["label"]))}</a>',
            f"{doc['request_throughput']:.2f}",
            f"{doc['output_token_throughput']:.0f}",
            *(
                _ms(doc[m][s])
                for m, s in (
                    ("ttft_ms", "p50"),
                    ("ttft_ms", "p99"),
                    ("itl_ms", "p50"),
                    ("tpot_ms", "p50"),
                    ("e2e_ms", "p99"),
                )
            ),
            str(doc["failed"]),
            "-" if good is None else f"{good['request_rate']:.2f}",
            client_state(doc)[0],
        ]
        mark = ' class="mark"' if i == point else ""
        rows.append(f"<tr{mark}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if point is None:
        said = "No saturation point: no step completed a request."
    else:
        said = (
            f"Saturation point (starred, highlighted): <b>{e(str(docs[point]['label']))}"
            f"</b> at {docs[point]['request_throughput']:.2f} req/s. Rule: "
            f"{e(SATURATION_RULE)}."
        )
    return (
        f'<h2 id="sweep">Sweep</h2><table>{head}{"".join(rows)}</table>'
        f"<p>{said}</p>" + charts_.add(charts.sweep_curves(docs, point), "sweep-curves")
    )


def _settings(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that shaped this run: a closed loop has no rate, arrival or burstiness."""
    config = dict(doc["config"])
    if doc["mode"] != "open":
        for key in OPEN_LOOP_ONLY:
            config.pop(key, None)
    return config


def _config(docs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """One row per setting; a setting that differs between a sweep's runs lists each run's."""
    flats = [flatten(_settings(doc)) for doc in docs]
    rows: dict[str, str] = {}
    for key in dict.fromkeys(k for flat in flats for k in flat):
        seen = [flat.get(key, "-") for flat in flats]
        rows[key] = (
            seen[0]
            if len(set(seen)) == 1
            else "; ".join(f"{doc['label']}: {v}" for doc, v in zip(docs, seen, strict=True))
        )
    return rows


def _search(search: Mapping[str, Any]) -> str:
    """An SLO search's steps and verdict (engine.loadtest.search), above its runs."""
    by = str(search["by"])
    slo = ", ".join(f"{k} ≤ {v:g}" for k, v in search["slo"].items())
    rule = (
        f"A step passes when at least {search['target_fraction']:.0%} of its requests meet "
        f"every objective ({e(slo)}) and at most {search['max_failed_share']:.0%} failed."
    )
    head = f"<tr><th>step</th><th>{e(by)}</th><th>goodput share</th><th>failed</th><th></th></tr>"
    rows = "".join(
        f'<tr><td><a href="#run{step["run"]}-">{e(str(step["label"]))}</a></td>'
        f"<td>{step[by]:g}</td><td>{step['goodput_fraction']:.1%}</td>"
        f"<td>{step['failed_share']:.1%}</td><td>{'passed' if step['passed'] else 'missed'}</td>"
        "</tr>"
        for step in search["steps"]
    )
    verdict = e(str(search["verdict"]["note"]))
    return (
        f'<h2 id="search">SLO search by {e(by)}</h2><p><b>{verdict}</b>. {rule}</p>'
        f"<table>{head}{rows}</table>"
    )


def render_html(
    results: Sequence[BenchResult],
    docs: Sequence[dict[str, Any]],
    search: Mapping[str, Any] | None = None,
) -> str:
    """The whole page as text (pure: the tests render it without touching a disk); an SLO
    search's section (its document's `search`) heads a search's runs."""
    charts_ = Charts()
    if len(docs) == 1:
        title = str(docs[0].get("label") or f"{docs[0]['mode']} loop")
        nav = [
            ("latency", "Latency"),
            *([("workload", "Workload")] if has_workload(docs[0]) else []),
            ("time", "Over time"),
            *([("slices", "Time slices")] if docs[0].get("slices") else []),
            ("ended", "How requests ended"),
            ("client", "Client self-check"),
        ]
        body = run_body(results[0], docs[0], charts_, "h2", "")
        sub = _shape(docs[0])
    else:
        title = "sweep"
        nav = [("sweep", "Sweep"), *((f"run{i}-", str(d["label"])) for i, d in enumerate(docs))]
        runs = "".join(
            f'<details open><summary><h2 id="run{i}-">{e(str(d["label"]))}</h2></summary>'
            f'<p class="sub">{e(_shape(d))}</p>{run_body(r, d, charts_, "h3", f"run{i}-")}'
            "</details>"
            for i, (r, d) in enumerate(zip(results, docs, strict=True))
        )
        sub = f"{len(docs)} steps; {_shape(docs[0]).split('; ', 1)[1]}"
        if search is None:
            body = _sweep(docs, charts_) + runs
        else:  # steps in the bisection's order: no saturation point, no curve through them
            title = f"SLO search by {search['by']}"
            nav[0] = ("search", "SLO search")
            body = _search(search) + runs
    nav += [("config", "Configuration"), ("platform", "Platform")]
    created = str(docs[0].get("created", "")) if docs else ""
    tail = (
        (
            f'<h2 id="config">Configuration</h2>{halves(_config(docs))}'
            f'<h2 id="platform">Platform</h2>{kv(flatten(docs[0]["platform"]))}'
        )
        if docs
        else ""
    )
    return page(f"stream-engine bench: {title}", f"{sub}\n{created}", nav, body + tail, charts_)


def write_html(
    results: Sequence[BenchResult], docs: Sequence[dict[str, Any]], path: str | Path
) -> None:
    Path(path).write_text(render_html(results, docs), encoding="utf-8")
