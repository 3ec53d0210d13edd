"""The load tester on every part of a real stream: reasoning before the text, tool calls
without text, cached and reasoning token counts; the timing figures of a reasoning stream
against the mock in its own process, and the bench flags that feed all of it."""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from rich.console import Console

from engine.cli.bench import add_arguments, config_from_args
from engine.client import Timeouts
from engine.config import COMMAND_TIMEOUTS as DEFAULTS
from engine.loadtest import LoadConfig, RequestRecord, run_load, summarize
from engine.loadtest.metrics import CSV_COLUMNS, csv_row
from engine.mock import MockConfig, MockProcess
from engine.report.console import print_summary
from tests.helpers import bench_child, make_record

if TYPE_CHECKING:
    from engine.loadtest.config import Endpoint
    from tests.conftest import MockFactory

ROOT = Path(__file__).resolve().parent.parent
TTFT_MS, ITL_MS, REASONING = 20.0, 10.0, 21
TOKENS = 31  # the request's cap: 21 reasoning tokens, then 10 of text
FIRST_TEXT_MS = TTFT_MS + REASONING * ITL_MS  # 230: the text follows the last reasoning token
PARTS_KEYS = {
    "ttft_text_ms",
    "reasoning_tokens",
    "cached_tokens",
    "tool_calls",
    "reasoning_tokens_per_request",
    "retry_after",
}


def _console_text(doc: dict[str, Any]) -> str:
    console = Console(file=io.StringIO(), width=250)
    print_summary(doc, console)
    return console.file.getvalue()  # type: ignore[attr-defined]


def raw_reference_ms(base_url: str, requests: int = 20) -> tuple[float, float]:
    """Median first-token and first-text times of the same mock, read by a few lines of
    blocking socket code (no engine, no event loop): what the server itself delivers."""
    host, _, port = base_url.split("//")[1].split("/", maxsplit=1)[0].partition(":")
    firsts: list[float] = []
    texts: list[float] = []
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(requests):
            body = orjson.dumps(
                {
                    "model": "m",
                    "input": f"#{i} reference",
                    "max_output_tokens": TOKENS,
                    "stream": True,
                }
            )
            sock.sendall(
                b"POST /v1/responses HTTP/1.1\r\nHost: mock\r\nContent-Type: "
                b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            sent = time.perf_counter_ns()
            buf, first, text = b"", 0, 0
            while not buf.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end (keep-alive)
                chunk = sock.recv(1 << 16)
                now = time.perf_counter_ns()
                assert chunk, "the mock closed the connection"
                buf += chunk
                if not first and b".delta\n" in buf:  # reasoning_text.delta
                    first = now
                if not text and b"output_text.delta\n" in buf:
                    text = now
            firsts.append((first - sent) / 1e6)
            texts.append((text - sent) / 1e6)
    return statistics.median(firsts), statistics.median(texts)


def cpu_share(seconds: float = 0.3) -> float:
    """The share of a core a busy process gets here now (1.0 on a quiet machine): CPU time
    over wall time of a spin. On a loaded machine every client's own microseconds stretch by
    its inverse, the bench's and the raw client's alike, but not equally (the bench does more
    per request), so the tolerances below scale by it rather than assume a quiet machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        pass
    return min(1.0, (time.process_time() - cpu) / (time.perf_counter() - wall))


def test_a_reasoning_stream_reports_first_token_first_text_and_the_token_pace(
    tmp_path: Path,
) -> None:
    """Mock (its own process, as bench starts it): TTFT 20 ms, ITL 10 ms, 21 reasoning
    tokens, then text at 230 ms.

    The issue's tolerances: both TTFT p50s within 2 ms of 20 / 230 ms, never below them, and
    ITL and TPOT p50 within 0.5 ms of 10 ms. The mock delivers 0-1 ms late (its timers wait
    whole milliseconds, engine/mock/pacing.py), so the bench's own share is also checked
    against a raw blocking socket client with no engine code, reading the same mock. On a
    loaded machine (the README's test command beside other work) the millisecond bounds are
    divided by the share of a core a process gets at the time (`cpu_share`)."""
    share = cpu_share()
    page = tmp_path / "reasoning.html"
    mock = ["--mock-ttft-ms", str(TTFT_MS), "--mock-itl-ms", str(ITL_MS)]
    load = ["--concurrency", "2", "--duration", "2", "--warmup", "0.5", "--html", str(page)]
    answers = ["--mock-reasoning-tokens", str(REASONING), "--output-tokens", str(TOKENS)]
    proc, doc = bench_child(
        *mock, *load, *answers, "--input-tokens", "16", out=tmp_path / "reasoning.json"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{REASONING} reasoning tokens first" in proc.stderr
    assert doc is not None
    mock = MockConfig(ttft_ms=TTFT_MS, itl_ms=ITL_MS, reasoning_tokens=REASONING)
    with MockProcess(mock) as reference:
        ref_first, ref_text = raw_reference_ms(reference.base_url)
    ttft, text = doc["ttft_ms"]["p50"], doc["ttft_text_ms"]["p50"]
    itl, tpot = doc["itl_ms"]["p50"], doc["tpot_ms"]["p50"]
    print(
        f"bench p50: TTFT {ttft:.2f}, to text {text:.2f}, ITL {itl:.2f}, TPOT {tpot:.2f} ms; "
        f"raw reference: TTFT {ref_first:.2f}, to text {ref_text:.2f} ms"
    )
    completed = doc["completed"]
    assert doc["failed"] == 0
    assert completed >= 6
    assert doc["config"]["facts"]["embedded_mock"]["reasoning_tokens"] == REASONING
    share = min(share, cpu_share())  # the busier of the two moments
    print(f"cpu share {share:.2f}")
    assert TTFT_MS <= ttft <= TTFT_MS + 2.0 / share
    assert FIRST_TEXT_MS <= text <= FIRST_TEXT_MS + 2.0 / share
    assert abs(ttft - ref_first) <= 1.5 / share
    assert abs(text - ref_text) <= 1.5 / share
    assert abs(itl - ITL_MS) <= 0.5
    assert abs(tpot - ITL_MS) <= 0.5
    # One token of any kind is one timed event: 31 per request, 30 gaps each.
    assert doc["itl_ms"]["count"] == completed * (TOKENS - 1)
    assert (doc["output_tokens"], doc["reasoning_tokens"]) == (
        completed * TOKENS,
        completed * REASONING,
    )
    assert doc["reasoning_tokens_per_request"]["p50"] == REASONING
    assert doc["ttft_text_ms"]["count"] == completed
    html = page.read_text()
    assert "<td>TTFT to text</td>" in html
    assert f"{completed * REASONING} reasoning" in html


def _tool_prompts(path: Path, endpoint: Endpoint) -> Path:
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    if endpoint == "chat":
        body = {
            "messages": [{"role": "user", "content": "weather in Paris?"}],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": params}}
            ],
            "tool_choice": "required",
        }
    else:
        body = {
            "input": "weather in Paris?",
            "tool_choice": "required",
            "tools": [{"type": "function", "name": "get_weather", "parameters": params}],
        }
    path.write_bytes(orjson.dumps(body) + b"\n")
    return path


@pytest.mark.parametrize("endpoint", ["responses", "chat"])
async def test_requests_that_only_call_tools_are_ok_and_timed(
    mock_factory: MockFactory, tmp_path: Path, endpoint: Endpoint
) -> None:
    """No text at all: TTFT, ITL and TPOT come from the call's fragments, no TTFT to text,
    and a TTFT objective is met (it is not missed for want of text)."""
    server = mock_factory(MockConfig(ttft_ms=5, itl_ms=2))
    config = LoadConfig(
        server.base_url,
        endpoint=endpoint,
        concurrency=2,
        requests=6,
        duration_s=None,
        warmup_s=0,
        canary=False,
        slo={"ttft_ms": 1000.0},
        prompts_file=str(_tool_prompts(tmp_path / "tools.jsonl", endpoint)),
    )
    result = await run_load(config)
    doc = result.summary()
    assert (doc["completed"], doc["failed"]) == (6, 0)
    assert doc["end_reasons"] == {"tool_calls": 6}
    assert doc["tool_calls"] == 6
    assert doc["goodput"]["fraction"] == 1.0
    assert doc["ttft_ms"]["count"] == doc["tpot_ms"]["count"] == 6
    assert doc["ttft_ms"]["min"] >= 5
    assert doc["ttft_text_ms"]["count"] == 0
    for record in result.measured:
        assert record.ok
        assert record.ttft_text_ms is None
        assert record.tool_calls == 1
        assert record.deltas >= 3  # the call's name and its argument fragments, timed
        assert record.tpot_ms is not None
        assert len(record.itl_ms) == record.deltas - 1
    text = _console_text(doc)
    assert "TTFT to text" not in text  # no row without values
    assert "6 tool calls" in text


async def test_cached_and_reasoning_tokens_are_reported_apart(base_url: str) -> None:
    config = LoadConfig(
        base_url,
        concurrency=2,
        requests=4,
        duration_s=None,
        warmup_s=0,
        output_tokens=16,
        input_tokens=20,
        canary=False,
        headers={"x-mock-reasoning-tokens": "5", "x-mock-cached-tokens": "8"},
    )
    result = await run_load(config)
    doc = result.summary()
    assert doc.keys() >= PARTS_KEYS
    assert doc["completed"] == 4
    assert (doc["output_tokens"], doc["reasoning_tokens"]) == (4 * 16, 4 * 5)
    assert (doc["input_tokens"], doc["cached_tokens"]) == (4 * 20, 4 * 8)
    for record in result.measured:
        assert (record.reasoning_tokens, record.cached_tokens) == (5, 8)
        assert record.ttft_ms is not None
        assert record.ttft_text_ms is not None
        assert record.ttft_text_ms >= record.ttft_ms  # the text follows the reasoning
    assert "80 in (32 cached), 64 out (20 reasoning)" in _console_text(doc)


def test_summary_csv_and_old_records_with_the_parts_fields() -> None:
    def rec(i: int, **fields: Any) -> RequestRecord:
        return make_record(i, e2e_ms=100.0, **fields)

    records = [
        rec(
            0,
            ttft_ms=10.0,
            ttft_text_ms=50.0,
            output_tokens=6,
            reasoning_tokens=4,
            cached_tokens=3,
            input_tokens=9,
            deltas=6,
            itl_ms=[8.0] * 5,
        ),
        rec(
            1,
            ttft_ms=12.0,
            output_tokens=3,
            reasoning_tokens=0,
            deltas=3,
            tool_calls=2,
            itl_ms=[6.0, 6.0],
        ),
        rec(2, ttft_ms=11.0, ttft_text_ms=11.0, output_tokens=2, deltas=2, itl_ms=[4.0]),
    ]
    doc = summarize(records, {"ttft_ms": 11.5})
    assert doc["ttft_ms"]["p50"] == 11.0
    assert doc["ttft_text_ms"]["count"] == 2  # the tool-call-only request has no text
    assert (doc["reasoning_tokens"], doc["cached_tokens"], doc["tool_calls"]) == (4, 3, 2)
    assert doc["reasoning_tokens_per_request"]["count"] == 2  # record 2's server said nothing
    assert doc["tpot_ms"]["mean"] == pytest.approx((8 + 6 + 4) / 3)
    assert doc["goodput"]["requests"] == 2  # by the first token of any kind: 10 and 11 ms
    assert doc["retry_after"] == {"requests": 0, "max_s": None, "waits": 0, "waited_s": 0.0}
    assert {
        "ttft_text_ms",
        "reasoning_tokens",
        "cached_tokens",
        "tool_calls",
        "retry_after_s",
        "waited_s",
    } <= set(CSV_COLUMNS)
    row = dict(zip(CSV_COLUMNS, csv_row(records[0]), strict=True))
    assert (row["ttft_text_ms"], row["reasoning_tokens"], row["tpot_ms"]) == (50.0, 4, 8.0)
    older = {k: v for k, v in records[0].as_dict().items() if k not in PARTS_KEYS}
    assert RequestRecord.from_dict(older).ttft_text_ms is None
    # A document written before these keys existed still prints.
    old_doc = {k: v for k, v in doc.items() if k not in PARTS_KEYS}
    empty = {"p50": None, "p99": None, "max": None, "count": 0}
    old_doc |= {
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
    assert "3 completed: 3 with no end reason from the server; 0 failed" in _console_text(old_doc)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_flags_for_limits_grace_reasoning_and_the_key() -> None:
    default = config_from_args(_parse(), "http://x/v1")
    assert default.timeouts == DEFAULTS  # the commands' limits (engine.config)
    assert default.grace_s == 30.0
    args = _parse(
        "--idle-timeout",
        "0.5",
        "--first-token-timeout",
        "1",
        "--connect-timeout",
        "2",
        "--first-byte-timeout",
        "none",
        "--total-timeout",
        "9",
        "--grace",
        "0",
        "--mock-reasoning-tokens",
        "7",
    )
    config = config_from_args(args, "http://x/v1")
    assert config.timeouts == Timeouts(
        connect_s=2.0, first_byte_s=None, first_token_s=1.0, idle_s=0.5, total_s=9.0
    )
    assert config.grace_s == 0.0  # 0: cut off at once (not "no limit")
    assert args.mock_reasoning_tokens == 7
    assert (
        config_from_args(
            _parse("--timeout", "4", "--total-timeout", "9"), "http://x/v1"
        ).timeouts.total_s
        == 4.0
    )  # the older flag still works
    assert config_from_args(_parse("--grace", "none"), "http://x/v1").grace_s is None
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "prefer the variable: a flag's value shows in the process list" in text
