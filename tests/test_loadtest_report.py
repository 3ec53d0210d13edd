"""What a run reports about how requests ended, over real HTTP to the mock: per error kind
the HTTP statuses, example messages, when the first came and request ids; incomplete results
as completed requests with their end reasons; credentials redacted from every output; the
HTML errors table."""

from __future__ import annotations

import csv
import io
import pickle
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from rich.console import Console

import engine.mock.responses as mock_responses
from engine.loadtest import LoadConfig, RequestRecord, run_load, summarize
from engine.loadtest.metrics import CSV_COLUMNS, EXAMPLES, csv_row
from engine.mock import MockConfig
from engine.redaction import REDACTED
from engine.report.console import print_summary
from tests.helpers import bench_flags, failed_record, make_record
from tests.test_loadtest import check_html_in_chromium

if TYPE_CHECKING:
    from pathlib import Path

    from engine.loadtest.config import Endpoint
    from tests.conftest import MockFactory

NEW_KEYS = {"error_details", "end_reasons", "incomplete", "reconnects"}


def _console_text(doc: dict[str, object]) -> str:
    console = Console(file=io.StringIO(), width=250)
    print_summary(doc, console)
    return console.file.getvalue()  # type: ignore[attr-defined]


async def test_error_details_give_statuses_messages_first_time_and_ids(
    mock_factory: MockFactory,
) -> None:
    server = mock_factory(
        MockConfig(output_tokens=8, faults={"429": 0.2, "500": 0.15, "error-event": 0.15})
    )
    config = LoadConfig(
        server.base_url,
        concurrency=4,
        requests=80,
        duration_s=None,
        warmup_s=0,
        output_tokens=8,
        canary=False,
    )
    doc = (await run_load(config)).summary()
    details = doc["error_details"]
    assert doc.keys() >= NEW_KEYS
    assert list(details) == list(doc["errors"])  # same kinds, same order (most first)
    assert {kind: d["count"] for kind, d in details.items()} == doc["errors"]
    assert {"http_429", "http_500", "ErrorEvent"} == set(details)
    # Every fault the server injected is one counted error (primers count separately).
    both = Counter(doc["errors"]) + Counter(doc["warmup"]["primer_errors"])
    injected = server.stats.faults
    assert (both["http_429"], both["http_500"], both["ErrorEvent"]) == (
        injected["429"],
        injected["500"],
        injected["error-event"],
    )
    statuses = {"http_429": "429", "http_500": "500", "ErrorEvent": "200"}  # a stream's own
    for kind, detail in details.items():
        assert detail["statuses"] == {statuses[kind]: detail["count"]}
        assert 1 <= len(detail["messages"]) <= EXAMPLES
        assert all(isinstance(m, str) and m for m in detail["messages"])
        assert 0 <= detail["first_at_s"] <= doc["duration_s"]
        assert 1 <= len(detail["request_ids"]) <= EXAMPLES
        assert all(rid.startswith("req_") for rid in detail["request_ids"])
    assert "Rate limit reached" in details["http_429"]["messages"][0]
    assert "server sent an error event" in details["ErrorEvent"]["messages"][0]
    # The mock's own ending for a capped answer varies; every completed request has one.
    assert sum(doc["end_reasons"].values()) == doc["completed"]
    assert doc["incomplete"] <= doc["completed"]
    text = _console_text(doc)
    first = details["http_429"]
    assert (
        f"{first['count']} x HTTP 429, first at {first['first_at_s']:.2f} s: {first['messages'][0]}"
    ) in text


async def test_a_transport_error_says_why_and_that_no_status_came(base_url: str) -> None:
    """The report that started this: `TransportError: 31` and nothing else."""
    config = LoadConfig(
        base_url,
        concurrency=2,
        requests=6,
        duration_s=None,
        warmup_s=0,
        canary=False,
        headers={"x-mock-fault": "reset"},
    )
    result = await run_load(config)
    doc = result.summary()
    assert doc["errors"] == {"TransportError": 6}
    detail = doc["error_details"]["TransportError"]
    assert detail["statuses"] == {"none": 6}
    assert detail["messages"]
    assert 0 <= detail["first_at_s"] <= doc["duration_s"]
    for record in result.measured:
        assert (record.ok, record.status, record.finish_reason) == (False, None, None)
        assert record.message
    text = _console_text(doc)
    assert "6 x no HTTP status, first at" in text
    assert detail["messages"][0][:40] in text


@pytest.mark.parametrize("endpoint", ["responses", "chat"])
async def test_incomplete_results_are_completed_requests_with_their_end_reason(
    base_url: str, endpoint: Endpoint
) -> None:
    config = LoadConfig(
        base_url,
        endpoint=endpoint,
        concurrency=2,
        requests=6,
        duration_s=None,
        warmup_s=0,
        output_tokens=8,
        canary=False,
        headers={"x-mock-fault": "incomplete"},
    )
    result = await run_load(config)
    doc = result.summary()
    assert (doc["completed"], doc["failed"], doc["incomplete"]) == (6, 0, 6)
    assert doc["end_reasons"] == {"length": 6}
    assert doc["errors"] == doc["error_details"] == {}
    assert doc["ttft_ms"]["count"] == 6
    for record in result.measured:
        assert (record.ok, record.incomplete, record.finish_reason) == (True, True, "length")
        assert (record.status, record.message) == (200, None)
    assert doc["requested_length"] == {"tokens": 8, "reached": 0, "short": {"length": 6}}
    text = _console_text(doc)
    # the fault cut each answer at half its length: asked for 8, never reached
    assert (
        "6 completed: 0 at the requested length (8 tokens), 6 cut short of it (length); 0 failed"
        in text
    )


def test_a_reflected_credential_is_redacted_in_json_csv_console_and_html(
    mock_factory: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server that echoes the key into an error event's text. The engine redacts error
    bodies but takes an event's text as sent, so this is the bench's own redaction at work.
    The text also carries HTML and rich markup, which must be shown, never interpreted."""
    from tests.conftest import bench_main as main  # noqa: PLC0415

    key, header_secret = "sk-reflected-" + "k" * 24, "hdr-secret-" + "h" * 16
    monkeypatch.setattr(
        mock_responses,
        "_ERROR_MESSAGE",
        f"<b>bad</b> key {key}, header {header_secret} [bold]x[/bold]",
    )
    monkeypatch.setenv("COLUMNS", "250")
    server = mock_factory(MockConfig(output_tokens=8))
    out, table, page = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.html"
    load = ["--base-url", server.base_url, "--api-key", key, "--requests", "6", "--warmup", "0"]
    faulty = ["--header", "x-mock-fault: error-event", "--header", f"x-api-key: {header_secret}"]
    outputs = ["--csv", str(table), "--html", str(page)]
    flags = [*load, "--concurrency", "2", "--output-tokens", "4", *faulty, *outputs]
    assert main(bench_flags(*flags, out=out)) == 1  # every request failed
    doc = orjson.loads(out.read_bytes())
    detail = doc["error_details"]["ErrorEvent"]
    assert (detail["count"], detail["statuses"]) == (6, {"200": 6})
    shown = (
        f"server sent an error event: <b>bad</b> key {REDACTED}, header {REDACTED} [bold]x[/bold]"
    )
    assert detail["messages"] == [shown]
    with table.open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6
    assert {(r["error"], r["status"], r["message"]) for r in rows} == {("ErrorEvent", "200", shown)}
    console = capsys.readouterr().err
    assert f"6 x HTTP 200, first at {detail['first_at_s']:.2f} s: {shown}" in console
    html = page.read_text()
    assert '<table class="errors">' in html
    assert "&lt;b&gt;bad&lt;/b&gt; key [redacted]" in html
    assert "<b>bad</b>" not in html
    for text in (out.read_text(), table.read_text(), console, html):
        assert key not in text
        assert header_secret not in text
    check_html_in_chromium(page, tmp_path)


def _rec(i: int, end_s: float, **fields: Any) -> RequestRecord:
    return make_record(i, intended_s=end_s - 0.1, e2e_ms=100.0, **fields)


def test_error_details_follow_failure_time_and_keep_a_few_distinct_examples() -> None:
    failed = [
        _rec(
            i,
            end_s=2.0 - i / 10,
            ok=False,
            error="TransportError",
            message=f"reset {i % 4}",
            request_id=f"req_{i}" if i % 2 else None,
        )
        for i in range(8)
    ]
    failed.append(_rec(8, end_s=0.5, ok=False, error="http_503", status=503, message="busy"))
    failed.append(_rec(9, end_s=0.6, ok=False, error="http_503", status=None, message="busy"))
    ok = [
        _rec(10, 0.3, ok=True, finish_reason="stop", status=200, reconnects=2),
        _rec(11, 0.4, ok=True, finish_reason="length", incomplete=True, status=200),
        _rec(12, 0.4, ok=True, status=200),
    ]
    doc = summarize([*failed, *ok], {})
    transport = doc["error_details"]["TransportError"]
    # Earliest failure first (the records' own order is by intended start, then index).
    assert transport["first_at_s"] == pytest.approx(2.0 - 0.7)
    assert transport["messages"] == ["reset 3", "reset 2", "reset 1"]
    assert transport["request_ids"] == ["req_7", "req_5", "req_3"]
    assert transport["statuses"] == {"none": 8}
    assert doc["error_details"]["http_503"]["statuses"] == {"503": 1, "none": 1}
    assert doc["error_details"]["http_503"]["messages"] == ["busy"]
    assert list(doc["errors"]) == ["TransportError", "http_503"]
    assert doc["end_reasons"] == {"stop": 1, "length": 1, "none": 1}
    assert (doc["completed"], doc["incomplete"], doc["reconnects"]) == (3, 1, 2)
    text = _console_text({**doc, **_doc_rest()})
    assert "2 (a pooled connection was dead: sent again, not a failure)" in text
    assert "2 x HTTP 503: 1, no HTTP status: 1, first at 0.50 s: busy" in text


def _doc_rest() -> dict[str, object]:
    """The parts of a run's document that `summarize` does not make (for print_summary)."""
    empty = {"p50": None, "p99": None, "max": None, "count": 0}
    return {
        "mode": "closed",
        "label": "",
        "connect_ms": empty,
        "warmup": {
            "seconds": 0,
            "requests": 0,
            "connections_primed": 0,
            "connections_opened_during_measurement": 0,
        },
        "client": {
            "loop_lag_ms": empty,
            "read_delay_ms": empty,
            "workers": [],
            "bottleneck": False,
            "verdict": "client OK",
        },
    }


def test_the_console_shows_an_error_kinds_message_whole() -> None:
    """A connect error's cause is at its end: cut to a prefix, the line said only `ssl:…`."""
    message = (
        "cannot connect to http://127.0.0.1:8000/v1/responses: ClientConnectorError: "
        "Cannot connect to host 127.0.0.1:8000 ssl:default [Too many open files]"
    )
    doc = summarize([failed_record(0, "ConnectError", message=message)], {})
    assert message in " ".join(_console_text({**doc, **_doc_rest()}).split())


def test_records_stay_picklable_and_read_older_dicts_and_csv_keeps_its_shape() -> None:
    record = _rec(1, 1.0, ok=False, error="http_500", status=500, message="boom")
    assert pickle.loads(pickle.dumps(record)) == record  # noqa: S301 - our own bytes
    assert RequestRecord.from_dict(record.as_dict()) == record
    older = {
        k: v
        for k, v in record.as_dict().items()
        if k not in {"message", "finish_reason", "incomplete", "reconnects"}
    }
    assert RequestRecord.from_dict(older).message is None
    assert CSV_COLUMNS[-1] == "message"  # free text last
    assert {"finish_reason", "incomplete", "reconnects", "status", "error"} <= set(CSV_COLUMNS)
    assert "itl_ms" not in CSV_COLUMNS
    row = dict(zip(CSV_COLUMNS, csv_row(record), strict=True))
    assert (row["error"], row["status"], row["message"]) == ("http_500", 500, "boom")
