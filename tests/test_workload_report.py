"""The workload's facts in the results (docs/workloads.md): asked against received lengths,
per turn, the prompt cache, cancellations as their own outcome, and time slices, in the JSON
document, the CSVs, the console and the HTML page, computed from hand-made records whose
every figure the test recomputes with numpy."""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from rich.console import Console

from engine.loadtest import BenchResult, LoadConfig, RequestRecord
from engine.loadtest.compare import compare_runs
from engine.loadtest.metrics import CSV_COLUMNS, csv_row
from engine.loadtest.outputs import slices_path, write_csv, write_slices_csv
from engine.loadtest.selfcheck import ClientCheck
from engine.loadtest.slices import SLICE_COLUMNS, slice_of, time_slices
from engine.report.console import print_summary
from engine.report.html import render_html, write_html
from tests.helpers import completed_record, failed_record, make_record
from tests.test_loadtest import check_html_in_chromium

if TYPE_CHECKING:
    from pathlib import Path

N = 24
CANCELLED = {4, 9, 17}
FAILED = {7, 20}
SECTIONS = ("cancelled", "lengths", "turns", "prefix_cache", "slices")


def _pct(data: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(data, dtype=np.float64), q)), 4)


def _asked_in(i: int) -> int:
    return 100 + 10 * i


def _asked_out(i: int) -> int:
    return 40 + 4 * i


def _got_out(i: int) -> int:
    """Every third answer stops early (the model's own stop); the rest reach their ask."""
    return _asked_out(i) - 7 if i % 3 == 1 else _asked_out(i)


def _ttft(i: int) -> float:
    return 50.0 + 7.0 * i + (30.0 if i % 3 else 0.0)  # later turns wait longer


def _record(i: int) -> RequestRecord:
    """Request `i`: sent at i/8 s, turn i % 3 of session i // 3, prefix group i % 2."""
    workload: dict[str, Any] = {
        "intended_s": i / 8,
        "asked_input_tokens": _asked_in(i),
        "asked_output_tokens": _asked_out(i),
        "session": i // 3,
        "turn": i % 3,
        "prefix_group": i % 2,
    }
    if i in CANCELLED:  # as the runner records a cut: not ok, its kind, no first token
        return make_record(
            i, ok=False, cancelled=True, error="Cancelled", e2e_ms=1000.0, **workload
        )
    if i in FAILED:
        return failed_record(i, "http_500", status=500, **workload)
    out = _got_out(i)
    return completed_record(
        i,
        _ttft(i),
        [2.0 + (i % 5)] * (out - 1),
        finish_reason="stop" if i % 3 == 1 else "length",
        input_tokens=_asked_in(i) + 3,  # the chat template's few tokens
        cached_tokens=0 if i % 3 == 0 else 64,
        **workload,
    )


def _result(records: list[RequestRecord] | None = None, **config: Any) -> BenchResult:
    settings: dict[str, Any] = {
        "rate": 8.0,
        "duration_s": N / 8,
        "slice_s": 1.0,
        "cancel_rate": 0.1,
        "slo": {"ttft_ms": 150.0},
        "turns": 3,
    }
    check = ClientCheck(0, "uvloop.Loop", 3.0, 0.5, 0.0, [0.1] * 20, [0.2] * 20)
    return BenchResult(
        LoadConfig("http://gpu:8000/v1", **(settings | config)),
        records if records is not None else [_record(i) for i in range(N)],
        [check],
        label="workload",
    )


def _completed() -> list[int]:
    return [i for i in range(N) if i not in CANCELLED | FAILED]


def test_cancelled_requests_are_their_own_outcome() -> None:
    doc = _result().summary()
    ok = _completed()
    assert (doc["completed"], doc["failed"]) == (len(ok), len(FAILED))
    assert doc["cancelled"] == {"count": len(CANCELLED), "share": len(CANCELLED) / N}
    assert doc["errors"] == {"http_500": len(FAILED)}  # no "Cancelled" kind among errors
    # Latencies from the completed requests alone (a cut request's 1000 ms E2E is not one).
    assert doc["e2e_ms"]["max"] < 1000
    assert doc["ttft_ms"]["count"] == len(ok)
    assert doc["samples"]["ttft_ms"] == [round(_ttft(i), 3) for i in ok]
    # Goodput's denominator: completed and failed, never the cancelled.
    good = [i for i in ok if _ttft(i) <= 150.0]
    assert doc["goodput"]["requests"] == len(good)
    assert doc["goodput"]["fraction"] == len(good) / (len(ok) + len(FAILED))
    assert "cancelled by the client" in " ".join(_console(doc).split())


def test_a_cancelled_warm_up_request_is_no_warm_up_failure() -> None:
    records = [_record(i) for i in range(N)]
    cut, bad = records[min(CANCELLED)], records[min(FAILED)]
    cut.warmup = bad.warmup = True
    warmup = _result(records).summary()["warmup"]
    assert (warmup["requests"], warmup["failed"]) == (2, 1)
    assert warmup["errors"] == {"http_500": 1}


def test_a_load_that_cancels_none_still_says_so_and_cancellations_are_not_a_failing_server() -> (
    None
):
    records = [_record(i) for i in range(N) if i not in CANCELLED]
    assert _result(records).summary()["cancelled"] == {"count": 0, "share": 0.0}
    cut = [make_record(i, ok=False, cancelled=True, error="Cancelled") for i in range(10)]
    assert _result([*cut, _record(0)]).server_failed() is None  # 10 of 11 cut: not failures


def test_lengths_set_asked_beside_received_and_count_short_answers() -> None:
    lengths = _result().summary()["lengths"]
    ok = _completed()
    for side, asked, got in (
        ("input", _asked_in, lambda i: _asked_in(i) + 3),
        ("output", _asked_out, _got_out),
    ):
        sent = [float(asked(i)) for i in range(N)]  # the workload as sent: every request
        received = [float(got(i)) for i in ok]
        assert lengths[side]["asked"] == {
            "mean": round(float(np.mean(sent)), 4),
            "stdev": round(float(np.std(sent, ddof=1)), 4),
            "p5": _pct(sent, 5),
            "p50": _pct(sent, 50),
            "p95": _pct(sent, 95),
            "min": min(sent),
            "max": max(sent),
            "count": N,
        }
        assert lengths[side]["received"]["p50"] == _pct(received, 50)
        assert lengths[side]["received"]["count"] == len(ok)
        ratio = math.fsum(got(i) / asked(i) for i in ok) / len(ok)
        assert lengths[side]["ratio_mean"] == round(ratio, 4)
    short = [i for i in ok if i % 3 == 1]
    assert lengths["output"]["short"] == {
        "count": len(short),
        "share": len(short) / len(ok),
        "reasons": {"stop": len(short)},
    }
    assert "short" not in lengths["input"]


def test_the_requested_length_follows_each_requests_own_ask() -> None:
    """With a length distribution, an answer reaching its own ask is not short of the mean."""
    asked = _result(ignore_eos=True).summary()["requested_length"]
    ok = _completed()
    assert asked["reached"] == sum(i % 3 != 1 for i in ok)
    assert asked["short"] == {"stop": sum(i % 3 == 1 for i in ok)}


def test_turns_give_ttft_e2e_and_tokens_per_turn() -> None:
    turns = _result().summary()["turns"]
    assert [row["turn"] for row in turns] == [0, 1, 2]
    for row in turns:
        group = [i for i in range(N) if i % 3 == row["turn"]]
        ok = [i for i in group if i in _completed()]
        ttft = [_ttft(i) for i in ok]
        assert row["sent"] == len(group)
        assert row["completed"] == len(ok)
        assert row["cancelled"] == len(CANCELLED & set(group))
        assert row["failed"] == len(FAILED & set(group))
        assert row["ttft_ms"] == {
            "p50": _pct(ttft, 50),
            "p90": _pct(ttft, 90),
            "p99": _pct(ttft, 99),
            "mean": round(float(np.mean(ttft)), 4),
            "count": len(ok),
        }
        e2e = [_ttft(i) + (2.0 + i % 5) * (_got_out(i) - 1) for i in ok]
        assert row["e2e_ms"]["p90"] == _pct(e2e, 90)
        assert row["input_tokens_mean"] == round(float(np.mean([_asked_in(i) + 3 for i in ok])), 4)
        assert row["cached_tokens_mean"] == (0.0 if row["turn"] == 0 else 64.0)


def test_the_prompt_cache_summary_splits_hits_from_misses() -> None:
    cache = _result().summary()["prefix_cache"]
    ok = _completed()
    hits = [i for i in ok if i % 3]
    misses = [i for i in ok if i % 3 == 0]
    shares = [(64 if i % 3 else 0) / (_asked_in(i) + 3) for i in ok]
    assert (cache["groups"], cache["completed"], cache["reported"]) == (2, len(ok), len(ok))
    assert (cache["hits"], cache["hit_share"]) == (len(hits), len(hits) / len(ok))
    assert cache["cached_share_mean"] == round(math.fsum(shares) / len(shares), 4)
    assert cache["ttft_ms_hit"]["p50"] == _pct([_ttft(i) for i in hits], 50)
    assert cache["ttft_ms_miss"]["count"] == len(misses)


def test_slices_partition_the_records_by_intended_start() -> None:
    result = _result()
    doc = result.summary()
    rows = doc["slices"]
    assert [list(row) for row in rows] == [list(SLICE_COLUMNS)] * len(rows)
    assert [(row["start_s"], row["end_s"]) for row in rows] == [(0, 1), (1, 2), (2, 3)]
    for name in ("sent", "completed", "failed", "cancelled"):
        assert (
            sum(row[name] for row in rows)
            == {
                "sent": N,
                "completed": doc["completed"],
                "failed": doc["failed"],
                "cancelled": doc["cancelled"]["count"],
            }[name]
        )
    for row in rows:
        group = [i for i in range(N) if row["start_s"] <= i / 8 < row["end_s"]]
        ok = [i for i in group if i in _completed()]
        ttft = [_ttft(i) for i in ok]
        gaps = [2.0 + i % 5 for i in ok for _ in range(_got_out(i) - 1)]
        assert row["sent"] == len(group) == 8
        assert row["request_throughput"] == len(ok) / 1.0
        assert row["output_token_throughput"] == sum(_got_out(i) for i in ok) / 1.0
        assert (row["ttft_ms_p50"], row["ttft_ms_p99"]) == (_pct(ttft, 50), _pct(ttft, 99))
        assert (row["itl_ms_p50"], row["itl_ms_p99"]) == (_pct(gaps, 50), _pct(gaps, 99))
        good = sum(_ttft(i) <= 150 for i in ok)
        assert row["goodput_fraction"] == good / (len(ok) + len(FAILED & set(group)))


def test_slice_edges_hold_against_float_noise_and_the_last_slice_is_its_own_length() -> None:
    assert [slice_of(k / 10, 0.1) for k in range(12)] == list(range(12))
    assert slice_of(0.3 - 1e-6, 0.1) == 2
    records = [completed_record(k, 10.0, [1.0], intended_s=k / 10) for k in range(10)]
    rows = time_slices(records, 0.1, {})
    assert [row["sent"] for row in rows] == [1] * 10  # one each: 0.3 is slice 3's, not 2's
    # Sending planned for 2.5 s with 1 s slices: the last slice is half a slice long.
    rows = time_slices([completed_record(0, 10.0, [1.0], intended_s=2.2)], 1.0, {}, 2.5)
    assert [(r["start_s"], r["end_s"], r["sent"]) for r in rows] == [
        (0, 1, 0),
        (1, 2, 0),
        (2, 2.5, 1),
    ]
    assert rows[2]["request_throughput"] == 1 / 0.5
    assert rows[0]["ttft_ms_p50"] is None
    # A run of `requests` has no planned end: the slices end with its last send.
    assert _result(requests=N).slices()[-1]["end_s"] == (N - 1) / 8


def test_csv_columns_and_the_slices_file(tmp_path: Path) -> None:
    result = _result()
    row = dict(zip(CSV_COLUMNS, csv_row(_record(4)), strict=True))
    assert (row["asked_input_tokens"], row["asked_output_tokens"]) == (140, 56)
    assert (row["session"], row["turn"], row["prefix_group"], row["cancelled"]) == (1, 1, 0, True)
    assert CSV_COLUMNS[-1] == "message"
    path = tmp_path / "requests.csv"
    assert write_csv([result], path) == N
    with path.open() as file:
        rows = list(csv.DictReader(file))
    assert sum(r["cancelled"] == "True" for r in rows) == len(CANCELLED)
    assert write_slices_csv([result], path) == 3
    assert slices_path(path) == tmp_path / "requests.slices.csv"
    with slices_path(path).open() as file:
        table = list(csv.reader(file))
    assert table[0] == ["run", *SLICE_COLUMNS]
    expected = result.summary()["slices"]
    assert [r[0] for r in table[1:]] == ["workload"] * 3
    assert [float(r[4]) for r in table[1:]] == [row["sent"] for row in expected]
    assert [float(r[9]) for r in table[1:]] == [row["output_token_throughput"] for row in expected]
    assert slices_path(tmp_path / "out") == tmp_path / "out.slices.csv"
    assert write_slices_csv([_result(slice_s=None)], tmp_path / "plain.csv") is None
    assert not (tmp_path / "plain.slices.csv").exists()


def _plain(i: int) -> RequestRecord:
    if i in FAILED:
        return failed_record(i, "http_500", status=500)
    return completed_record(i, _ttft(i), [2.0] * 9, finish_reason="length", input_tokens=100)


def test_a_load_without_these_workloads_has_none_of_the_sections() -> None:
    records = [_plain(i) for i in range(N)]
    doc = _result(records, slice_s=None, cancel_rate=0.0, turns=1).summary()
    assert not set(SECTIONS) & set(doc)
    text = _console(doc)
    for word in ("cancelled", "asked", "turn", "prompt cache", "slice"):
        assert word not in text
    page = render_html([_result(records, slice_s=None, cancel_rate=0.0, turns=1)], [doc])
    assert 'id="workload"' not in page
    assert 'id="slices"' not in page
    # compare reads a new document beside an old-shaped one (no workload keys at all).
    new = _result().summary()
    comp = compare_runs([doc, new])
    assert {row.metric.key for row in comp.rows} >= {"ttft_ms", "failed_fraction"}


def _console(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    print_summary(doc, Console(file=out, width=200, color_system=None))
    return out.getvalue()


def test_the_console_shows_the_workload_tables_and_caps_the_slices() -> None:
    result = _result(slice_s=0.125)  # one slice per request: 24 rows
    doc = result.summary()
    text = _console(doc)
    assert "requested and received lengths" in text
    assert "per turn" in text
    assert "12 of 24 not shown" in text
    assert "12 more" in text
    assert "prompt cache" in text
    assert f"{len(CANCELLED)} cancelled by the client" in text


@pytest.mark.parametrize("sliced", [1.0, None])
def test_the_page_shows_the_workload_sections(sliced: float | None) -> None:
    result = _result(slice_s=sliced)
    doc = result.summary()
    page = render_html([result], [doc])
    for name in ("lengths", "turns", "outcomes"):
        assert f'data-chart="{name}"' in page
    assert ('data-chart="slices"' in page) == (sliced is not None)
    assert ('href="#slices"' in page) == (sliced is not None)
    assert "Requested and received lengths" in page
    assert f"{len(CANCELLED)} cancelled" in page


def test_fixed_lengths_get_the_table_without_a_histogram() -> None:
    """One asked length is a single bar: the table says it (and a plain run's page keeps
    its charts)."""
    records = [_record(i) for i in range(N)]
    for record in records:
        record.asked_input_tokens, record.asked_output_tokens = 128, 64
    result = _result(records)
    doc = result.summary()
    assert doc["lengths"]["output"]["asked"]["stdev"] == 0.0
    page = render_html([result], [doc])
    assert "Requested and received lengths" in page
    assert 'data-chart="lengths"' not in page


def test_the_workload_page_renders_in_a_browser(tmp_path: Path) -> None:
    result = _result()
    page = tmp_path / "report.html"
    write_html([result], [result.summary()], page)
    check_html_in_chromium(page, tmp_path)
