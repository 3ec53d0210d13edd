"""`stream-engine compare`: the bootstrap, the noise rule and the exit codes on hand-made
documents, then the real thing: two mock runs 2x apart in TTFT, and two alike."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from engine.cli import main
from engine.loadtest import compare
from engine.loadtest.metrics import RequestRecord, summarize
from engine.loadtest.result import SCHEMA_VERSION, samples, sweep_document
from tests.helpers import bench_child, completed_record, failed_record

ROOT = Path(__file__).resolve().parent.parent


# -- hand-made documents -----------------------------------------------------------------------


def record(
    i: int,
    ttft: float,
    *,
    ok: bool = True,
    warmup: bool = False,
    gap: float = 10.0,
    tokens: int = 16,
    slow_gap: float | None = None,
) -> RequestRecord:
    """A request sent every 10 ms whose TTFT is `ttft` and whose gaps are `gap` ms."""
    sent = {"intended_s": i / 100, "lag_ms": 0.1, "warmup": warmup}
    if not ok:
        return failed_record(i, "http_500", status=500, **sent)
    gaps = [gap] * (tokens - 1)
    if slow_gap is not None:
        gaps[0] = slow_gap
    return completed_record(i, ttft, gaps, finish_reason="stop", ttft_text_ms=ttft, **sent)


def document(
    ttfts: Any,
    *,
    failed: int = 0,
    with_samples: bool = True,
    label: str = "",
    slo: dict[str, float] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """A result document built by the bench's own code from records with these TTFTs."""
    records = [record(i, float(t), **kw) for i, t in enumerate(ttfts)]
    records += [record(len(records) + i, 0.0, ok=False) for i in range(failed)]
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": "stream-engine bench",
        "label": label,
        "mode": "closed",
        **summarize(records, slo or {}),
    }
    if with_samples:
        doc["samples"] = samples(records)
    return doc


def around(center: float, n: int = 200, spread: float = 0.02, seed: int = 1) -> np.ndarray:
    """n TTFTs around `center`, +-spread relative (a seeded, reproducible run)."""
    return center * (1 + np.random.default_rng(seed).uniform(-spread, spread, n))


def write(tmp_path: Path, name: str, doc: Any) -> str:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(doc))
    return str(path)


def run_compare(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    """`stream-engine compare --json ARGS` in-process: the exit code and the JSON."""
    code = main(["compare", "--json", *args])
    out = capsys.readouterr().out
    return code, (orjson.loads(out) if out else {})


def row(result: dict[str, Any], metric: str, position: int = 0) -> dict[str, Any]:
    rows = result["comparisons"][position]["metrics"]
    return next(r for r in rows if r["metric"] == metric)


# -- the bootstrap -----------------------------------------------------------------------------


def test_bootstrap_is_reproducible_and_brackets_the_sample_percentile() -> None:
    values = np.random.default_rng(3).exponential(100.0, 400)
    draws = compare.bootstrap_percentiles(values, ["p50", "p90"])
    assert draws.shape == (2, compare.RESAMPLES)
    assert np.array_equal(draws, compare.bootstrap_percentiles(values, ["p50", "p90"]))
    for stat, row_draws in zip(("p50", "p90"), draws, strict=True):
        low, high = compare.interval(row_draws)
        q = compare.PERCENTILES[stat]
        assert low < np.percentile(values, q) < high


def test_bootstrap_chunks_give_the_same_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long run is resampled in chunks to bound memory; the result must not change."""
    values = np.random.default_rng(4).normal(50.0, 5.0, 300)
    whole = compare.bootstrap_percentiles(values, ["p50"])
    monkeypatch.setattr(compare, "CHUNK_VALUES", 7 * 300)
    assert np.array_equal(compare.bootstrap_percentiles(values, ["p50"]), whole)


def test_bootstrap_interval_covers_the_true_median_about_95_percent_of_the_time() -> None:
    """Why it can be trusted as 'the run's own noise': over 100 independent runs of 300
    requests from a skewed distribution, the interval holds the true median ~95 times."""
    rng = np.random.default_rng(5)
    true_median = 100.0 * np.log(2)
    hits = 0
    for _ in range(100):
        low, high = compare.interval(
            compare.bootstrap_percentiles(rng.exponential(100.0, 300), ["p50"], resamples=400)[0]
        )
        hits += low <= true_median <= high
    assert 88 <= hits <= 100


def test_interval_narrows_with_more_requests() -> None:
    rng = np.random.default_rng(6)
    widths = []
    for n in (100, 1600):
        low, high = compare.interval(
            compare.bootstrap_percentiles(rng.normal(100.0, 10.0, n), ["p50"])[0]
        )
        widths.append(high - low)
    assert 2.5 < widths[0] / widths[1] < 6  # ~sqrt(16) = 4


def test_tail_percentiles_need_enough_requests() -> None:
    assert [compare.needed(s) for s in ("p50", "p90", "p99")] == [10, 50, 500]
    figures = compare.RunFigures(document(around(100.0, n=80)))
    p50, p99 = (
        next(m for m in compare.METRICS if m.ident == f"ttft_ms.{s}") for s in ("p50", "p99")
    )
    assert figures.interval(p50) is not None
    assert figures.interval(p99) is None  # 80 requests: p99 is the top value or two


def test_samples_are_completed_measured_requests_rounded() -> None:
    records = [
        record(0, 50.12345),
        record(1, 60.0, warmup=True),
        record(2, 0.0, ok=False),
        record(3, 70.0, gap=10.00049),
    ]
    got = samples(records)
    assert set(got) == {"ttft_ms", "ttft_text_ms", "tpot_ms", "e2e_ms"}
    assert got["ttft_ms"] == [50.123, 70.0]
    assert got["tpot_ms"] == [10.0, 10.0]  # the per-request mean gap, 0.001 ms
    assert got["e2e_ms"] == [200.123, 220.007]


# -- the noise rule and the exit codes ---------------------------------------------------------


def test_the_same_run_twice_is_no_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a.json", document(around(100.0)))
    b = write(tmp_path, "b.json", document(around(100.0, seed=2)))
    code, result = run_compare(a, b, capsys=capsys)
    assert code == 0
    assert result["regressions"] == []
    assert row(result, "ttft_ms.p50")["significant"] == [None, False]


def test_twice_the_ttft_is_a_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, "a.json", document(around(100.0)))
    b = write(tmp_path, "b.json", document(around(200.0, seed=2)))
    code, result = run_compare(a, b, capsys=capsys)
    assert code == compare.EXIT_REGRESSION
    ttft = row(result, "ttft_ms.p50")
    assert ttft["significant"] == [None, True]
    assert ttft["regression"] == [False, True]
    assert 95 < ttft["change_pct"][1] < 105
    assert "ttft_ms.p50" in {r["metric"] for r in result["regressions"]}
    assert result["exit_code"] == 1


def test_an_improvement_is_significant_but_not_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a.json", document(around(200.0)))
    b = write(tmp_path, "b.json", document(around(100.0, seed=2)))
    code, result = run_compare(a, b, capsys=capsys)
    assert code == 0
    assert row(result, "ttft_ms.p50")["significant"] == [None, True]


def test_a_significant_change_below_the_threshold_passes_until_the_threshold_drops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a.json", document(around(100.0, spread=0.01)))
    b = write(tmp_path, "b.json", document(around(105.0, spread=0.01, seed=2)))
    code, result = run_compare(a, b, capsys=capsys)
    assert code == 0
    assert row(result, "ttft_ms.p50")["significant"] == [None, True]
    code, result = run_compare("--threshold", "3", a, b, capsys=capsys)
    assert code == 1
    assert result["threshold_pct"] == 3


def test_a_large_change_inside_the_noise_is_not_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """12 requests spread over 10x: p50 moves 30 % from one such run to the next by chance."""
    a = write(tmp_path, "a.json", document(np.geomspace(20, 200, 12)))
    b = write(tmp_path, "b.json", document(np.geomspace(20, 200, 12) * 1.3))
    code, result = run_compare(a, b, capsys=capsys)
    ttft = row(result, "ttft_ms.p50")
    assert ttft["change_pct"][1] == pytest.approx(30.0)
    assert ttft["significant"] == [None, False]
    assert code == 0


def test_a_throughput_drop_is_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same latencies, half the completed requests in the same window."""
    a = write(tmp_path, "a.json", document(around(100.0, n=400)))
    doc = document(around(100.0, n=200))
    doc["duration_s"] = orjson.loads(Path(a).read_bytes())["duration_s"]
    doc["request_throughput"] = doc["completed"] / doc["duration_s"]
    doc["output_token_throughput"] = doc["output_tokens"] / doc["duration_s"]
    b = write(tmp_path, "b.json", doc)
    code, result = run_compare(a, b, capsys=capsys)
    assert code == 1
    assert {r["metric"] for r in result["regressions"]} == {
        "request_throughput",
        "output_token_throughput",
    }


def test_failures_are_marked_but_not_gated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a.json", document(around(100.0)))
    b = write(tmp_path, "b.json", document(around(100.0, seed=2), failed=60))
    code, result = run_compare(a, b, capsys=capsys)
    failed = row(result, "failed_fraction")
    assert failed["values"] == [0.0, pytest.approx(100 * 60 / 260, abs=1e-3)]
    assert failed["significant"] == [None, True]
    assert failed["regression"] == [False, False]
    assert code == 0


def test_goodput_is_compared_only_under_the_same_slo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a.json", document(around(100.0), slo={"ttft_ms": 150}))
    b = write(tmp_path, "b.json", document(around(200.0, seed=2), slo={"ttft_ms": 150}))
    c = write(tmp_path, "c.json", document(around(200.0, seed=2), slo={"ttft_ms": 500}))
    _, result = run_compare(a, b, capsys=capsys)
    assert row(result, "goodput")["regression"] == [False, True]  # nobody meets 150 ms now
    _, result = run_compare(a, c, capsys=capsys)
    good = row(result, "goodput")
    assert good["significant"] == [None, None]
    assert "differ" in good["note"]


def test_a_document_without_samples_is_compared_without_a_noise_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = document(around(100.0), with_samples=False)
    del old["ttft_text_ms"]  # older still: keys added within version 1 are optional
    a = write(tmp_path, "a.json", old)
    b = write(tmp_path, "b.json", document(around(200.0, seed=2)))
    code, result = run_compare(a, b, capsys=capsys)
    ttft = row(result, "ttft_ms.p50")
    assert 95 < ttft["change_pct"][1] < 105
    assert ttft["significant"] == [None, None]
    assert code == 0
    assert any("no per-request samples" in note for note in result["notes"])
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "no per-request samples" in " ".join(out.split())  # rich wraps long lines
    assert re.search(r"TTFT p50 \(ms\).*\+\d+\.\d % \?", out)


def test_sweeps_are_compared_step_by_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = ["sync", "throughput", "rate 5.00/s"]
    base = sweep_document(
        [document(around(100.0, seed=s), label=name) for s, name in enumerate(steps)]
    )
    worse = sweep_document(
        [
            document(around(t, seed=s + 5), label=name)
            for s, (name, t) in enumerate(zip(steps, (100, 100, 200), strict=True))
        ]
    )
    a, b = write(tmp_path, "a.json", base), write(tmp_path, "b.json", worse)
    code, result = run_compare(a, b, capsys=capsys)
    assert code == 1
    assert result["kind"] == "sweep"
    assert {r["position"] for r in result["regressions"]} == {2}
    assert result["comparisons"][2]["labels"] == ["rate 5.00/s", "rate 5.00/s"]


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not json",
        "not bench",
        "schema",
        "list",
        "malformed",
        "one file",
        "sweep vs run",
        "sweep lengths",
        "folder without result.json",
    ],
)
def test_bad_input_is_exit_code_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, "good.json", document(around(100.0)))
    sweep2 = write(tmp_path, "s2.json", sweep_document([document(around(100.0))] * 2))
    sweep3 = write(tmp_path, "s3.json", sweep_document([document(around(100.0))] * 3))
    bad_path = tmp_path / "bad.json"
    files = {
        "missing": [good, str(tmp_path / "nope.json")],
        "not json": [good, str(bad_path)],
        "not bench": [good, write(tmp_path, "x.json", {"tool": "something else"})],
        "schema": [
            good,
            write(tmp_path, "v2.json", {**document(around(1.0)), "schema_version": 2}),
        ],
        "list": [good, write(tmp_path, "l.json", [1, 2])],
        "malformed": [good, write(tmp_path, "m.json", {**document(around(1.0)), "ttft_ms": 12.5})],
        "one file": [good],
        "sweep vs run": [sweep2, good],
        "sweep lengths": [sweep2, sweep3],
        "folder without result.json": [good, str(tmp_path)],
    }[case]
    bad_path.write_text("{not json")
    assert main(["compare", *files]) == compare.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "error:" in err


def test_html_is_one_self_contained_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path, "a.json", document(around(100.0)))
    b = write(tmp_path, "b.json", document(around(200.0, seed=2)))
    out = tmp_path / "cmp.html"
    assert main(["compare", a, b, "--html", str(out)]) == 1
    page = out.read_text()
    assert page.count("<script>") == 1 + 1  # plotly.js once, then the chart's own call
    assert "<script src" not in page
    body = page[page.index("</head>") :]
    assert "TTFT p50 (ms)" in body
    assert "REGRESSION" in body
    assert "https://" not in body
    assert 'data-chart="changes-0"' in body
    assert "REGRESSION: b.json against a.json: TTFT p50 +100.1 %" in capsys.readouterr().out
    # The page every report is built on: it draws its chart offline, with no error.
    from tests.test_loadtest_html import check_in_browser  # noqa: PLC0415

    assert check_in_browser(out, tmp_path / "cmp.png")["charts"] == ["changes-0"]


def run_folder(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    """A run folder as bench leaves it: `stream-engine-runs/<time>-<mode>/result.json`."""
    folder = tmp_path / "stream-engine-runs" / name
    folder.mkdir(parents=True)
    write(folder, "result.json", doc)
    return folder


def test_compare_takes_the_run_folders_bench_prints_and_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It refused them (`cannot read (Is a directory)`); with two result.json files both
    columns were headed by their clashing paths and the verdict named `(result.json)`."""
    before = run_folder(tmp_path, "20261207-010101-closed", document(around(100.0)))
    after = run_folder(tmp_path, "20261207-010202-closed", document(around(200.0, seed=2)))
    code, result = run_compare(str(before), str(after), capsys=capsys)
    assert code == 1
    assert result["files"] == [str(before), str(after)]
    assert result["names"] == ["20261207-010101-closed", "20261207-010202-closed"]
    assert {r["run_name"] for r in result["regressions"]} == {"20261207-010202-closed"}
    # the files inside work the same, and the columns still say which run
    code = main(["compare", str(before / "result.json"), str(after / "result.json")])
    out = capsys.readouterr().out
    assert code == 1
    assert "20261207-010101-closed" in out.splitlines()[0]  # the title: against the baseline
    assert "REGRESSION: 20261207-010202-closed against 20261207-010101-closed: TTFT p50 +" in (
        " ".join(out.split())
    )
    assert "(result.json)" not in out


def test_columns_are_headed_by_the_runs_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = run_folder(tmp_path, "20261207-010101-gpu-a", document(around(100.0), label="gpu-a"))
    new = run_folder(
        tmp_path, "20261207-010202-gpu-b", document(around(50.0, seed=2), label="gpu-b")
    )
    code, result = run_compare(str(base), str(new), capsys=capsys)
    assert code == 0
    assert result["names"] == ["gpu-a", "gpu-b"]
    assert main(["compare", str(base), str(new)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "compare against gpu-a" in out
    assert (
        "no regression beyond 10 % outside the noise against gpu-a; better: gpu-b: TTFT p50 -"
        in out
    )
    # two runs with one label: their paths tell them apart
    twin = run_folder(tmp_path, "20261207-010303-gpu-a", document(around(100.0), label="gpu-a"))
    _, result = run_compare(str(base), str(twin), capsys=capsys)
    assert result["names"] == [str(base), str(twin)]


def test_worse_and_better_have_their_colours_in_the_console_and_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TTFT halves (better), the decode gap doubles (worse): the table's change cells and the
    chart's bars say which is which, not one colour per run."""
    from engine.report.compare import console_tables  # noqa: PLC0415
    from engine.report.compare_html import BAR_COLOUR  # noqa: PLC0415

    a = write(tmp_path, "a.json", document(around(100.0)))
    b = write(tmp_path, "b.json", document(around(50.0, seed=2), gap=20.0))
    report = compare.compare_files([a, b])
    table = console_tables(report)[0]
    metrics = [str(c) for c in table.columns[0]._cells]
    changes = dict(zip(metrics, table.columns[3]._cells, strict=True))
    assert changes["TTFT p50 (ms)"].style == "green"
    assert changes["TPOT p50 (ms)"].style == "bold red"  # worse by more than 10 %: regression
    out = tmp_path / "cmp.html"
    assert main(["compare", a, b, "--html", str(out)]) == 1
    capsys.readouterr()
    page = out.read_text()
    assert re.search(r'<td class="better">-\d+\.\d %', page)
    assert re.search(r'<td class="bad">\+\d+\.\d % ! REGRESSION', page)
    drawn = re.search(r'id="charts">(.*?)</script>', page, re.DOTALL)
    assert drawn is not None
    charts = orjson.loads(drawn[1])
    bars = charts["chart-0"]["data"][0]
    colours = dict(zip(bars["x"], bars["marker"]["color"], strict=True))
    assert colours["TTFT p50"] == BAR_COLOUR["better"]
    assert colours["TPOT p50"] == BAR_COLOUR["regression"]
    assert colours["ITL p50"] != BAR_COLOUR["better"]  # no noise estimate: grey, not judged
    assert [t["name"] for t in charts["chart-0"]["data"][1:]] == [
        "worse, outside the noise",
        "better, outside the noise",
        "inside the noise",
    ]


# -- real runs against the mock ----------------------------------------------------------------


def run_bench(path: Path, ttft_ms: float) -> dict[str, Any]:
    """A small closed-loop run against the embedded mock, through the CLI."""
    mock = ["--mock-ttft-ms", str(ttft_ms), "--mock-itl-ms", "10", "--output-tokens", "16"]
    load = ["--concurrency", "8", "--duration", "2", "--warmup", "0.5"]
    proc, doc = bench_child(*mock, *load, out=path, timeout_s=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc is not None
    return doc


@pytest.fixture(scope="module")
def mock_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("compare")
    paths = {name: folder / f"{name}.json" for name in ("fast", "fast_again", "slow")}
    # The two runs of one configuration run side by side, so they share the machine's load: on a
    # busy laptop, runs made one after the other genuinely differ when the load changes between
    # them, and flagging that is right. Side by side, any difference left is the runs' own noise.
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda name: run_bench(paths[name], 50), ("fast", "fast_again")))
    run_bench(paths["slow"], 100)
    return paths


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compare_flags_a_2x_ttft_regression_between_mock_runs(
    mock_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fast, slow = mock_runs["fast"], mock_runs["slow"]
    doc = orjson.loads(fast.read_bytes())
    assert len(doc["samples"]["ttft_ms"]) == doc["ttft_ms"]["count"] >= 40
    code, result = run_compare(str(fast), str(slow), capsys=capsys)
    ttft = row(result, "ttft_ms.p50")
    with capsys.disabled():  # the measured figures, shown with -s
        print(
            f"\n2x: TTFT p50 {ttft['values']} ms, intervals {ttft['intervals']}, "
            f"change {ttft['change_pct'][1]:+.1f} %, flagged {ttft['regression'][1]}"
        )
    assert code == 1
    assert 50 <= ttft["values"][0] < 60
    assert 100 <= ttft["values"][1] < 110
    assert ttft["significant"][1]
    assert ttft["regression"][1]
    assert main(["compare", str(fast), str(slow)]) == 1
    table = capsys.readouterr().out
    assert re.search(r"TTFT p50 \(ms\).*REGRESSION", table)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compare_does_not_flag_two_runs_of_the_same_configuration(
    mock_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = run_compare(str(mock_runs["fast"]), str(mock_runs["fast_again"]), capsys=capsys)
    ttft = row(result, "ttft_ms.p50")
    with capsys.disabled():
        print(
            f"\nsame: TTFT p50 {ttft['values']} ms, intervals {ttft['intervals']}, "
            f"change {ttft['change_pct'][1]:+.1f} %, significant {ttft['significant'][1]}, "
            f"exit {code}"
        )
    assert code == 0
    assert result["regressions"] == []
    assert abs(ttft["change_pct"][1]) < 5
