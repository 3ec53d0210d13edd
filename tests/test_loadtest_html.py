"""The HTML report and the run folder: every chart rendered by Plotly in a real headless
chromium (driven by playwright, the system's /usr/bin/chromium, no browser download), with
no console error and no network request but the file itself; server metrics from a
hand-made document; the sweep's saturation rule; where bench leaves its results."""

from __future__ import annotations

import csv
import datetime as dt
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pytest

from engine.loadtest import BenchResult, LoadConfig, RequestRecord
from engine.loadtest.outputs import RUNS_DIR, run_folder
from engine.loadtest.result import saturation_index, sweep_document
from engine.loadtest.selfcheck import ClientCheck
from engine.report.html import render_html, write_html
from engine.report.text import saturation_text
from tests.helpers import completed_record, failed_record

if TYPE_CHECKING:
    from collections.abc import Callable

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
FOLDER = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9._-]+$")
HOSTILE = "<b>bad</b> </script><script>alert(1)</script> 100% %{y}"


def check_in_browser(page: Path, shot: Path, full_page: bool = True) -> dict[str, Any]:
    """Open `page` in headless chromium with a fresh profile; wait for the report's charts;
    fail on any console error, page error or request other than the file itself (all
    others are aborted, so a page that would fetch something also fails to render it).
    Returns what was seen; leaves a screenshot at `shot` (the whole page by default). CI
    installs chromium: a missing browser is a failure, never a skip for an unchecked report."""
    from playwright.sync_api import Route, sync_playwright  # noqa: PLC0415

    assert Path(CHROMIUM).exists(), f"chromium not found at {CHROMIUM}: install it (CI does)"
    url = page.resolve().as_uri()
    console: list[tuple[str, str]] = []
    failures: list[str] = []
    requests: list[str] = []

    def block(route: Route) -> None:
        if route.request.url == url:
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", block)
            tab = context.new_page()
            tab.on("console", lambda m: console.append((m.type, m.text)))
            tab.on("pageerror", lambda exc: failures.append(str(exc)))
            tab.on("request", lambda r: requests.append(r.url))
            tab.on("websocket", lambda ws: requests.append(ws.url))
            tab.goto(url)
            tab.wait_for_function(
                "document.body.dataset.chartsRendered !== undefined", timeout=60_000
            )
            rendered = tab.eval_on_selector_all(
                ".chart", "els => els.map(d => [d.dataset.chart, !!d.querySelector('.main-svg')])"
            )
            count = int(tab.evaluate("document.body.dataset.chartsRendered"))
            tab.screenshot(path=str(shot), full_page=full_page)
        finally:
            browser.close()
    assert requests == [url], requests  # the file itself, nothing else
    assert not failures, failures
    assert [m for m in console if m[0] == "error"] == [], console
    assert rendered, "no chart on the page"
    assert [name for name, ok in rendered if not ok] == []
    assert count == len(rendered)
    assert shot.stat().st_size > 20_000
    return {"charts": [name for name, _ in rendered], "console": console}


def test_the_browser_check_catches_a_request_and_a_console_error(tmp_path: Path) -> None:
    """The check itself: a page that fetches anything, or logs an error, fails it."""
    page = tmp_path / "fetch.html"
    chart = (
        '<body data-charts-rendered="1"><div class="chart" data-chart="x">'
        '<svg class="main-svg"></svg></div>'
    )
    page.write_text(f'{chart}<img src="http://127.0.0.1:9/x.png"></body>')
    with pytest.raises(AssertionError, match=r"127\.0\.0\.1:9"):
        check_in_browser(page, tmp_path / "a.png")
    page.write_text(f"{chart}<script>console.error('boom')</script></body>")
    with pytest.raises(AssertionError, match="boom"):
        check_in_browser(page, tmp_path / "b.png")


def _record(i: int, rng: np.random.Generator, rate: float, slow: float = 1.0) -> RequestRecord:
    start = i / rate
    if i % 37 == 5:
        return failed_record(
            i,
            "http_429",
            intended_s=start,
            lag_ms=0.1,
            status=429,
            e2e_ms=3.0,
            message=f"Rate limit reached {HOSTILE}",
            request_id=f"req_{i}",
        )
    if i % 53 == 7:
        reset = "connection reset by peer"
        return failed_record(
            i, "TransportError", intended_s=start, lag_ms=0.2, e2e_ms=40.0, message=reset
        )
    ttft = float(rng.lognormal(np.log(120 * slow), 0.25))
    gaps = [float(g) for g in rng.gamma(8, 10 * slow / 8, size=15)]
    return completed_record(
        i,
        ttft,
        gaps,
        worker=i % 2,
        intended_s=start,
        lag_ms=float(rng.exponential(0.2)),
        status=200,
        finish_reason="length" if i % 9 == 0 else "stop",
        first_byte_ms=ttft - 2,
        ttft_text_ms=ttft + 60 * slow,
        input_tokens=128,
        reasoning_tokens=6,
    )


def synthetic(
    n: int = 400, rate: float = 40.0, slow: float = 1.0, label: str = "", seed: int = 1
) -> BenchResult:
    """A run as if against a GPU server: lognormal TTFT, gamma gaps, reasoning first, a few
    429s (with a hostile message) and resets; two workers, one of them too busy."""
    rng = np.random.default_rng(seed)
    config = LoadConfig(
        "http://gpu:8000/v1",
        model="my-model",
        rate=rate,
        duration_s=n / rate,
        slo={"ttft_ms": 160 * slow, "tpot_ms": 12},
        workers=2,
        label=label,
        facts={"embedded_mock": {"ttft_ms": 120, "faults": ""}},
    )
    checks = [
        ClientCheck(
            w,
            "uvloop.Loop",
            n / rate,
            (0.3 + 0.65 * w) * n / rate,
            0.0,
            list(rng.exponential(0.3, 200)),
            list(rng.exponential(0.2, 200)),
        )
        for w in range(2)
    ]
    return BenchResult(
        config,
        [_record(i, rng, rate, slow) for i in range(n)],
        checks,
        connect_ms=[0.8, 0.9],
        primed=2,
        label=label,
    )


def server_metrics(duration_s: float) -> dict[str, Any]:
    """What the Prometheus scraper writes (docs/server-metrics.md): series on the records'
    time origin, histograms as per-bucket counts during the run, and the scrape's facts."""
    times = np.arange(-1.0, duration_s + 1, 0.5)
    running = np.clip(np.sin(times / 2) * 4 + 6, 0, None)

    def points(ys: np.ndarray) -> list[list[float]]:
        return [[float(t), float(v)] for t, v in zip(times, ys, strict=True)]

    return {
        "url": "http://gpu:8000/metrics",
        "interval_s": 0.5,
        "scrapes": times.size,
        "failed": 1,
        "errors": [f"HTTP 503: {HOSTILE}"],
        "server": "vllm",
        "series": {
            "requests_running": points(running),
            "requests_waiting": points(np.clip(running - 8, 0, None)),
            "kv_cache_usage": points(running / 12),
            "generation_tokens_per_s": points(running * 60),
        },
        "histograms": {
            "server_ttft_s": {
                "le": [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, "+Inf"],
                "counts": [3, 90, 200, 60, 15, 2, 0, 0],
                "sum": 46.2,
                "count": 370,
                "from_s": -1.0,
                "to_s": duration_s + 1,
            },
            "server_itl_s": {
                "le": [0.005, 0.01, 0.015, 0.02, 0.05, "+Inf"],
                "counts": [400, 2500, 2300, 200, 150, 0],
                "sum": 55.0,
                "count": 5550,
            },
            "server_e2e_s": {
                "le": [0.1, 0.25, 0.5, 1.0, 2.5],
                "counts": [0, 120, 240, 10, 0],
                "sum": 110.0,
                "count": 370,
            },
            "server_queue_s": {
                "le": [0.001, 0.01, 0.1, 1.0, "+Inf"],
                "counts": [300, 50, 20, 0, 0],
                "sum": 1.2,
                "count": 370,
            },
        },
        "sources": {
            "requests_running": "vllm:num_requests_running",
            "kv_cache_usage": "vllm:gpu_cache_usage_perc",
        },
        "raw_names": [f"vllm:metric_{i}" for i in range(120)],
    }


def test_a_run_renders_every_chart_offline_with_server_metrics_beside(tmp_path: Path) -> None:
    result = synthetic()
    doc = result.summary()
    doc["server_metrics"] = server_metrics(doc["duration_s"])
    page = tmp_path / "report.html"
    write_html([result], [doc], page)
    text = page.read_text()
    assert text.count("Plotly=") <= 2 or text.count("plotly.js v") == 1  # the bundle, once
    assert text.count("<script") == 3  # the bundle, the charts' data, the drawing script
    # Server strings are shown escaped, never as markup or a way out of a script.
    assert "<b>bad</b>" not in text
    assert "</script><script>alert(1)" not in text
    assert "&lt;b&gt;bad&lt;/b&gt;" in text
    for name in (
        "server: requests_running",
        "server: kv_cache_usage",
        "server_queue_s",
        "server vs client",
        "sources.kv_cache_usage",
        "vllm:gpu_cache_usage_perc",
        "120 metric families (in result.json)",
    ):
        assert name in text, name
    assert "vllm:metric_7" not in text
    for header in (
        "p50",
        "p99.9",
        "mean",
        "max",
        "Goodput against the SLOs",
        "schedule lag",
        "CLIENT-BOUND",
        "base_url",
        "facts.embedded_mock.ttft_ms",
        "versions.numpy",
    ):
        assert header in text, header
    seen = check_in_browser(page, tmp_path / "report.png")
    assert seen["charts"] == [
        "ttft_ms-distribution",
        "ttft_text_ms-distribution",
        "itl_ms-distribution",
        "tpot_ms-distribution",
        "e2e_ms-distribution",
        "timeline",
        "server-histogram",
        "outcomes",
    ]


def test_chart_data_match_the_records_and_server_buckets_convert_to_ms() -> None:
    from engine.report import charts  # noqa: PLC0415

    data = np.array([10.0, 20.0, 30.0, 40.0, 1000.0])
    bounds, _, labels = charts.server_buckets(
        {"le": [0.015, 0.035, "+Inf"], "counts": [1, 2, 3], "sum": 0.0, "count": 6}
    )
    assert list(bounds[:2]) == [15.0, 35.0]
    assert labels == ["\u226415", "\u226435", ">35"]
    assert list(charts._client_in_buckets(data, bounds)) == [1, 2, 2]  # le: upper inclusive
    assert list(charts._client_in_buckets(np.array([35.0]), bounds)) == [0, 1, 0]
    _, hist, tail = charts._bins(np.arange(1.0, 2001.0))
    assert hist.sum() + tail == 2000
    assert tail == 2  # beyond p99.9: one bar, not a squeezed axis
    xs, ys = charts._cdf(np.arange(10_000.0))
    assert xs.size < 700
    assert ys[-1] == 1.0
    assert xs[-1] == 9999.0


def test_render_is_pure_and_says_when_ttft_to_text_is_ttft() -> None:
    result = synthetic(n=60)
    for record in result.records:
        record.ttft_text_ms = record.ttft_ms
        record.reasoning_tokens = None
    doc = result.summary()
    doc["config"]["slo"] = {}
    doc["goodput"] = None
    text = render_html([result], [doc])
    assert "TTFT to text equals TTFT for every request" in text
    assert 'data-chart="ttft_text_ms-distribution"' not in text
    assert "Goodput against the SLOs" not in text


def _config_rows(page: str) -> set[str]:
    """The setting names of the page's Configuration table."""
    table = page[page.index('<h2 id="config">') : page.index('<h2 id="platform">')]
    return set(re.findall(r"<tr><td>([^<]+)</td>", table))


def test_a_closed_loop_lists_only_the_settings_it_used() -> None:
    """A closed loop's report listed `arrival poisson`, `burstiness 1`: settings it never used."""
    rng = np.random.default_rng(3)
    closed = BenchResult(
        LoadConfig("http://gpu:8000/v1", concurrency=4, duration_s=4.0),
        [_record(i, rng, 10.0) for i in range(40)],
        [ClientCheck(0, wall_s=4.0)],
    )
    rows = _config_rows(render_html([closed], [closed.summary()]))
    assert {"concurrency", "duration_s", "ignore_eos", "output_tokens"} <= rows
    assert not rows & {"rate", "arrival", "burstiness", "spin_ms"}
    opened = synthetic(n=60)
    assert {"rate", "arrival", "burstiness", "spin_ms"} <= _config_rows(
        render_html([opened], [opened.summary()])
    )


def test_a_chart_legend_says_the_tables_number() -> None:
    """The TPOT legend rounded to 10.0 where the table said 10.05: two decimals everywhere."""
    result = synthetic(n=60)
    doc = result.summary()
    page = render_html([result], [doc])
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        for stat in ("p50", "p99"):
            shown = f"{doc[metric][stat]:.2f}"
            assert f"<td>{shown}</td>" in page, (metric, stat)  # the percentiles table
            assert f'"{stat} {shown} ms"' in page, (metric, stat)  # the chart's legend


def test_a_run_without_requests_renders_notes_not_broken_charts() -> None:
    result = BenchResult(
        LoadConfig("http://127.0.0.1:9/v1", requests=1, duration_s=None), [], [ClientCheck(0)]
    )
    text = render_html([result], [result.summary()])
    assert "No completed request: no latency to show." in text
    assert "No request in the measured window." in text
    assert 'class="chart"' not in text


def _doc(label: str, throughput: float, ttft_p99: float | None) -> dict[str, Any]:
    return {
        "label": label,
        "completed": 0 if ttft_p99 is None else 10,
        "request_throughput": throughput,
        "ttft_ms": {"p99": ttft_p99},
    }


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # throughput keeps growing, TTFT p99 stays within 2x: the heaviest step
        ([("sync", 1, 100), ("r1", 3, 110), ("r2", 6, 150), ("throughput", 9, 190)], "throughput"),
        # the last step buys < 5 % more throughput: saturation is the step before it
        ([("sync", 1, 100), ("r1", 5, 120), ("r2", 8, 150), ("throughput", 8.2, 900)], "r2"),
        # more throughput, but TTFT p99 past 2x the lightest step's
        ([("sync", 1, 100), ("r1", 5, 180), ("r2", 8, 260), ("throughput", 12, 400)], "r1"),
        # order is by achieved throughput, not by the runs' order; a failed step is left out
        (
            [("sync", 1, 100), ("throughput", 8, 150), ("dead", 0, None), ("r1", 4, 120)],
            "throughput",
        ),
        # one stream was already the most the server gives
        ([("sync", 2, 100), ("throughput", 2.05, 400)], "sync"),
    ],
)
def test_saturation_point_rule(steps: list[tuple[str, float, float | None]], expected: str) -> None:
    docs = [_doc(*step) for step in steps]
    index = saturation_index(docs)
    assert index is not None
    assert docs[index]["label"] == expected
    assert saturation_text(docs).startswith(f"saturation point: {expected} ")


def test_no_saturation_point_without_a_completed_step() -> None:
    assert saturation_index([_doc("sync", 0, None)]) is None
    assert saturation_index([]) is None


def test_a_sweep_renders_the_latency_throughput_curve_with_its_saturation_point(
    tmp_path: Path,
) -> None:
    results = [
        synthetic(n=120, rate=rate, slow=slow, label=label, seed=i)
        for i, (label, rate, slow) in enumerate(
            [
                ("sync", 8, 1.0),
                ("throughput", 40, 4.0),
                ("rate 20.00/s", 20, 1.1),
                ("rate 30.00/s", 30, 1.4),
            ]
        )
    ]
    docs = [r.summary() for r in results]
    docs[1]["server_metrics"] = server_metrics(docs[1]["duration_s"])
    sweep = sweep_document(docs)
    assert sweep["saturation"]["label"] == "rate 30.00/s"  # throughput: TTFT p99 > 2x sync's
    page = tmp_path / "sweep.html"
    write_html(results, docs, page)
    text = page.read_text()
    assert '<tr class="mark"><td><a href="#run3-">rate 30.00/s</a>' in text
    assert "Saturation point (starred, highlighted): <b>rate 30.00/s</b>" in text
    for doc in docs:
        assert f'<h2 id="run{docs.index(doc)}-">{doc["label"]}</h2>' in text
    assert "concurrency</td><td>sync: 16; throughput: 16" not in text  # same: one value
    assert "rate</td><td>sync: 8; throughput: 40; rate 20.00/s: 20; rate 30.00/s: 30" in text
    seen = check_in_browser(page, tmp_path / "sweep.png", full_page=False)
    assert seen["charts"][0] == "sweep-curves"
    assert seen["charts"].count("timeline") == 4


# -- the run folder ------------------------------------------------------------------------


def test_run_folder_names_are_safe_and_never_reused(tmp_path: Path) -> None:
    started = dt.datetime(2026, 3, 1, 14, 5, 9)  # noqa: DTZ001 - local time by design
    first = run_folder(tmp_path / "runs", started, "my run/../x")
    again = run_folder(tmp_path / "runs", started, "my run/../x")
    assert first.name == "20260301-140509-my-run-..-x"
    assert again.name == "20260301-140509-my-run-..-x-2"
    assert run_folder(tmp_path, started, "///").name == "20260301-140509-run"
    assert first.is_dir()
    assert again.is_dir()


@pytest.fixture
def bench_main() -> Callable[[list[str]], int]:
    from tests.conftest import bench_main as main  # noqa: PLC0415

    return main


def _flags(base_url: str) -> list[str]:
    """A quick run that saves where the test says (no -o, the run folder kept)."""
    load = ["--base-url", base_url, "--requests", "12", "--concurrency", "3", "--warmup", "0"]
    mock = ["--header", "x-mock-ttft-ms: 2", "--header", "x-mock-itl-ms: 1"]
    return [*load, "--output-tokens", "6", *mock, "--no-canary", "-q"]


def test_bench_leaves_a_run_folder_in_the_current_directory(
    base_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bench_main: Callable[[list[str]], int],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    assert bench_main([*_flags(base_url), "--label", "nightly a/b"]) == 0
    (folder,) = (tmp_path / RUNS_DIR).iterdir()
    assert FOLDER.match(folder.name)
    assert folder.name.endswith("-nightly-a-b")
    assert sorted(p.name for p in folder.iterdir()) == [
        "report.html",
        "requests.csv",
        "result.json",
    ]
    doc = orjson.loads((folder / "result.json").read_bytes())
    assert (doc["label"], doc["completed"]) == ("nightly a/b", 12)
    with (folder / "requests.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 12
    assert f"results: {Path(RUNS_DIR) / folder.name}" in capsys.readouterr().err
    check_in_browser(folder / "report.html", tmp_path / "run.png")
    assert bench_main(_flags(base_url)) == 0  # without a label: the mode names the folder
    assert any(p.name.endswith("-closed") for p in (tmp_path / RUNS_DIR).iterdir())


def test_output_dir_picks_the_folder_and_no_save_writes_nothing(
    base_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bench_main: Callable[[list[str]], int],
) -> None:
    monkeypatch.chdir(tmp_path)
    chosen = tmp_path / "here" / "run1"
    extra = tmp_path / "extra.json"
    assert bench_main([*_flags(base_url), "--output-dir", str(chosen), "-o", str(extra)]) == 0
    assert sorted(p.name for p in chosen.iterdir()) == [
        "report.html",
        "requests.csv",
        "result.json",
    ]
    assert extra.read_bytes() == (chosen / "result.json").read_bytes()
    assert not (tmp_path / RUNS_DIR).exists()
    assert bench_main([*_flags(base_url), "--no-save"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.json", "here"]
    with pytest.raises(SystemExit):  # one or the other
        bench_main([*_flags(base_url), "--no-save", "--output-dir", str(chosen)])


def test_a_sweep_leaves_one_folder_with_the_sweep_document(
    base_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bench_main: Callable[[list[str]], int],
) -> None:
    monkeypatch.chdir(tmp_path)
    flags = [f for f in _flags(base_url) if f not in ("--requests", "12")]
    assert bench_main([*flags, "--sweep", "1", "--duration", "0.4"]) == 0
    (folder,) = (tmp_path / RUNS_DIR).iterdir()
    assert folder.name.endswith("-sweep")
    doc = orjson.loads((folder / "result.json").read_bytes())
    assert doc["kind"] == "sweep"
    assert len(doc["runs"]) == 3
    assert doc["saturation"]["label"] in {run["label"] for run in doc["runs"]}
    text = (folder / "report.html").read_text()
    assert 'data-chart="sweep-curves"' in text
    assert text.count('data-chart="timeline"') == 3
