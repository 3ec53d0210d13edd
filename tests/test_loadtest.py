"""The load tester against the mock in its own process: accuracy, schedule, faults, merging,
outputs, and the CLI end to end (HTML checked in headless chromium)."""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import itertools
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pytest
from rich.console import Console

from engine.errors import ConfigError
from engine.loadtest import (
    BenchResult,
    LoadConfig,
    RequestRecord,
    combine,
    garbage,
    merge,
    run_load,
    run_sweep,
)
from engine.loadtest.config import AUTO_WORKERS, Endpoint, parse_slo
from engine.loadtest.metrics import meets_slo, stats, summarize
from engine.loadtest.prompts import load_bodies
from engine.loadtest.runner import PHASES, WorkerResult
from engine.loadtest.selfcheck import ClientCheck, verdict
from engine.loadtest.shapes import arrival_offsets, open_schedule, sweep_rates
from engine.loadtest.workers import auto_workers, loop_factory, resolve_workers
from engine.loadtest.workload import Workload
from engine.mock import MockConfig, MockProcess
from engine.report.progress import LiveProgress
from tests.conftest import TEST_API_KEY
from tests.helpers import (
    bench_child,
    bench_flags,
    completed_record,
    machine_stall_ms,
    make_record,
)

SNAPSHOT_KEYS = {
    "worker", "label", "phase", "elapsed_s", "done", "failed", "cancelled", "warmup_done",
    "inflight", "primed", "priming", "ttft_p50_ms", "requests", "duration_s", "warmup_s",
    "grace_s",
}  # fmt: skip

if TYPE_CHECKING:
    from collections.abc import Iterator

    from engine.loadtest.interrupts import Stop
    from engine.mock import MockServerThread
    from tests.conftest import MockFactory

ROOT = Path(__file__).resolve().parent.parent
FAST = {"x-mock-ttft-ms": "0", "x-mock-itl-ms": "0"}
MOCK_5_1 = ["--header", "x-mock-ttft-ms: 5", "--header", "x-mock-itl-ms: 1"]  # per request
SCHEMA_KEYS = {
    "schema_version",
    "ttft_ms",
    "itl_ms",
    "tpot_ms",
    "e2e_ms",
    "completed",
    "failed",
    "errors",
    "request_throughput",
    "output_token_throughput",
    "goodput",
    "duration_s",
    "config",
    "platform",
    "client",
    "schedule_lag_ms",
    "connect_ms",
    "error_details",
    "end_reasons",
    "incomplete",
    "reconnects",
}
STAT_KEYS = {"p50", "p90", "p95", "p99", "p999", "mean", "max"}


@pytest.fixture(scope="module")
def paced_mock() -> Iterator[MockProcess]:
    """The mock at TTFT 100 ms / ITL 10 ms, in its own process (headers can override)."""
    with MockProcess(MockConfig(ttft_ms=100, itl_ms=10, output_tokens=16)) as proc:
        yield proc


@pytest.fixture(scope="module")
def paced(paced_mock: MockProcess) -> str:
    return paced_mock.base_url


def bench(config: LoadConfig):  # type: ignore[no-untyped-def]
    """Run on uvloop in this thread: timing tests need not run twice (asyncio + uvloop)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(run_load(config))


def test_ttft_and_itl_match_the_server_pacing_and_tokens_match_usage(paced: str) -> None:
    config = LoadConfig(
        paced, concurrency=4, duration_s=1.5, warmup_s=0.3, output_tokens=20, input_tokens=40
    )
    result = bench(config)
    doc = result.summary()
    assert doc["failed"] == 0
    assert doc["completed"] >= 8
    assert abs(doc["ttft_ms"]["p50"] - 100) < 5
    assert abs(doc["itl_ms"]["p50"] - 10) < 1
    for record in result.measured:
        assert record.output_tokens == record.deltas == 20  # usage == counted deltas
        assert record.input_tokens == 40  # the mock's documented count for this prompt
    assert doc["output_tokens"] == 20 * doc["completed"]
    assert doc["warmup"]["connections_opened_during_measurement"] == 0
    assert doc["warmup"]["connections_primed"] == 4
    assert doc["connect_ms"]["count"] >= 4


def test_open_loop_sends_on_schedule_at_500_per_second(paced: str, tmp_path: Path) -> None:
    """p99 schedule lag < 1 ms at 500 req/s, in at least one of five runs.

    Each run is the bench command in a fresh process, as a user runs it (not inside this
    test process, whose large heap and mock threads are not the tester's), without the
    canary (a third busy process on a 2-core machine; it has its own tests). Every run must
    complete exactly its schedule. On this 2-vCPU VM, runs of the same command see stalls of
    2-60 ms at random moments, with the client's loop idle or spinning: the bound is asked of
    the best of 5 runs, what the scheduler can do when the machine lets it.
    """
    load = ["--base-url", paced, "--rate", "500", "--arrival", "constant", "--workers", "1"]
    answers = ["--output-tokens", "2", "--input-tokens", "8", *MOCK_5_1]
    lags = []
    for _ in range(5):
        proc, doc = bench_child(
            *load, *answers, "--duration", "1.5", "--warmup", "0.3", out=tmp_path / "lag.json"
        )
        assert proc.returncode == 0, proc.stderr
        assert doc is not None
        assert doc["failed"] == 0
        assert doc["completed"] == 750  # exactly the schedule: 1.5 s x 500/s
        assert doc["client"]["workers"][0]["spin_s"] > 0
        lags.append(doc["schedule_lag_ms"]["p99"])
        if lags[-1] < 1.0:
            break
    print("schedule lag p99 per run (ms)", lags)
    if min(lags) >= 1.0:
        stall_ms = machine_stall_ms()
        if stall_ms >= 1.0:  # the machine, not the client: see machine_stall_ms
            pytest.skip(
                f"this machine stalls a spinning process for {stall_ms:.1f} ms "
                f"(longest gap in 1.5 s): no client can send within 1 ms; lags {lags}"
            )
    assert min(lags) < 1.0


SERVER_TTFT_MS = 30.0


def _send_order(records: list[RequestRecord]) -> list[RequestRecord]:
    return sorted(records, key=lambda r: r.intended_s + r.lag_ms / 1000)


def _check_waits_are_counted(records: list[RequestRecord]) -> None:
    """One pool connection: every send waits for the previous stream's last byte, and that
    wait is in the request's schedule lag, TTFT and E2E (no coordinated omission)."""
    assert all(r.ok and r.ttft_ms is not None and r.e2e_ms is not None for r in records)
    for prev, cur in itertools.pairwise(_send_order(records)):
        # An independent lower bound on the wait: the server cannot end `prev`'s body before
        # its TTFT after `prev` went out, and the one connection is busy until then. (Not
        # `prev`'s stamped end: aiohttp frees the connection as it parses the body's end, and
        # on a busy loop the reader task stamps that chunk later, possibly after the waiting
        # request took the connection.)
        sent_s = prev.intended_s + prev.lag_ms / 1000
        assert cur.intended_s + cur.lag_ms / 1000 >= sent_s + SERVER_TTFT_MS / 1000
    for r in records:
        assert r.ttft_ms is not None
        assert r.e2e_ms is not None
        assert r.lag_ms >= r.pool_wait_ms >= 0
        # The mock never sends a first token before arrival + its TTFT, and the request
        # arrived after it was sent, so a TTFT from the intended start holds the whole wait.
        assert r.ttft_ms >= r.lag_ms + SERVER_TTFT_MS
        assert r.e2e_ms >= r.ttft_ms


def test_open_loop_counts_the_wait_for_a_pool_connection(paced: str) -> None:
    # 40 req/s with one connection and ~35 ms streams: each send waits longer than the last.
    config = LoadConfig(
        paced,
        rate=40,
        arrival="constant",
        requests=10,
        duration_s=None,
        warmup_s=0,
        output_tokens=4,
        max_connections=1,
        headers={"x-mock-ttft-ms": str(SERVER_TTFT_MS), "x-mock-itl-ms": "1"},
    )
    result = bench(config)
    records = result.measured
    assert len(records) == 10
    _check_waits_are_counted(records)
    queued = [r for r in records if r.pool_wait_ms > 0]
    assert len(queued) >= 5
    assert all(r.lag_ms > 0 for r in queued)
    late = _send_order(records)
    assert late[-1].lag_ms > late[0].lag_ms  # the queue grows: the schedule is not stretched
    doc = result.summary()
    assert doc["schedule_lag_ms"]["max"] == pytest.approx(max(r.lag_ms for r in records), abs=1e-3)
    assert doc["pool_wait_ms"]["max"] > 0
    assert doc["client"]["bottleneck"]
    assert "pool connection" in doc["client"]["verdict"]


def test_closed_loop_counts_the_wait_for_a_pool_connection(paced: str) -> None:
    config = LoadConfig(
        paced,
        concurrency=4,
        requests=8,
        duration_s=None,
        warmup_s=0,
        output_tokens=4,
        max_connections=1,
        headers={"x-mock-ttft-ms": str(SERVER_TTFT_MS), "x-mock-itl-ms": "1"},
    )
    result = bench(config)
    records = result.measured
    _check_waits_are_counted(records)
    assert sum(r.pool_wait_ms > 0 for r in records) >= 4
    assert result.summary()["schedule_lag_ms"]["p90"] > 0


async def test_faults_are_counted_by_kind_never_raised(mock_factory: MockFactory) -> None:
    server = mock_factory(
        MockConfig(
            output_tokens=8, faults={"429": 0.2, "500": 0.1, "disconnect": 0.1, "error-event": 0.1}
        )
    )
    config = LoadConfig(
        server.base_url, concurrency=4, requests=80, duration_s=None, warmup_s=0, output_tokens=8
    )
    doc = (await run_load(config)).summary()
    assert doc["completed"] + doc["failed"] == 80
    assert {"http_429", "http_500", "ErrorEvent"} <= set(doc["errors"])
    assert sum(doc["errors"].values()) == doc["failed"]
    assert doc["failed"] >= 20


@pytest.mark.parametrize("endpoint", ["responses", "chat"])
async def test_malformed_and_disconnect_are_counted_by_kind(
    mock_factory: MockFactory, endpoint: Endpoint
) -> None:
    server = mock_factory(MockConfig(output_tokens=8, faults={"malformed": 0.3, "disconnect": 0.3}))
    config = LoadConfig(
        server.base_url,
        endpoint=endpoint,
        concurrency=4,
        requests=60,
        duration_s=None,
        warmup_s=0,
        output_tokens=8,
    )
    doc = (await run_load(config)).summary()
    assert doc["completed"] + doc["failed"] == 60
    # A cut body is a broken connection or a clean end without the terminal event,
    # depending on where the server's close lands; bad JSON is a ProtocolError.
    cut = {"TransportError", "StreamTruncated"}
    assert "ProtocolError" in doc["errors"]
    assert set(doc["errors"]) - {"ProtocolError"} <= cut
    assert set(doc["errors"]) & cut
    assert sum(doc["errors"].values()) == doc["failed"]
    # Every fault the server injected is one counted error (primers count separately).
    both = Counter(doc["errors"]) + Counter(doc["warmup"]["primer_errors"])
    injected = server.stats.faults
    assert both["ProtocolError"] == injected["malformed"]
    assert sum(both[kind] for kind in cut) == injected["disconnect"]
    assert doc["ttft_ms"]["count"] == doc["completed"]


async def test_a_forced_fault_fails_every_request_cleanly(base_url: str) -> None:
    config = LoadConfig(
        base_url,
        concurrency=2,
        requests=6,
        duration_s=None,
        warmup_s=0,
        headers={"x-mock-fault": "503"},
    )
    doc = (await run_load(config)).summary()
    assert doc["errors"] == {"http_503": 6}
    assert doc["completed"] == 0
    assert doc["ttft_ms"]["p50"] is None


def test_two_workers_split_the_load_and_merge_exactly(paced: str) -> None:
    config = LoadConfig(
        paced,
        concurrency=4,
        requests=40,
        duration_s=None,
        warmup_s=0.2,
        output_tokens=4,
        workers=2,
        headers=FAST,
    )
    result = bench(config)
    doc = result.summary()
    measured = result.measured
    assert doc["completed"] == 40
    assert {r.worker for r in measured} == {0, 1}
    assert len(result.checks) == 2
    union = np.array([r.ttft_ms for r in measured])
    assert doc["ttft_ms"]["p99"] == pytest.approx(float(np.percentile(union, 99)), abs=1e-3)


def _record(i: int, worker: int, ttft: float) -> RequestRecord:
    return completed_record(i, ttft, [10.0, 10.0, 10.0], worker=worker)


def test_combine_is_exact_over_the_union() -> None:
    config = LoadConfig("http://x/v1")
    parts = [
        WorkerResult(
            w,
            [_record(i, w, 10.0 * (w + 1) + i) for i in range(50)],
            ClientCheck(w),
            connect_ms=[1.0],
        )
        for w in range(3)
    ]
    result = combine(config, parts)
    doc = summarize(result.records, {})
    union = [r.ttft_ms for p in parts for r in p.records if r.ttft_ms is not None]
    assert doc["completed"] == 150
    for key, q in (("p50", 50), ("p99", 99), ("p999", 99.9)):
        assert doc["ttft_ms"][key] == pytest.approx(float(np.percentile(union, q)), abs=1e-3)
    assert len(result.connect_ms) == 3
    assert merge([parts[1].records, parts[0].records]) == merge(
        [parts[0].records, parts[1].records]
    )
    assert RequestRecord.from_dict(parts[0].records[0].as_dict()) == parts[0].records[0]


def test_tpot_and_throughputs_are_computed_from_the_records() -> None:
    def rec(i: int, intended_s: float, **fields: Any) -> RequestRecord:
        return make_record(i, intended_s=intended_s, **fields)

    records = [
        rec(
            0,
            0.0,
            ttft_ms=100.0,
            e2e_ms=510.0,
            output_tokens=5,
            input_tokens=10,
            deltas=5,
            itl_ms=[100.0] * 4,
        ),
        # Usage counts 30 tokens, 21 came as timed events (the last at 1500 ms): TPOT is
        # timed from those, (1500 - 50) / (21 - 1), not spread over 29 untimed gaps.
        rec(
            1,
            0.5,
            ttft_ms=50.0,
            e2e_ms=1500.0,
            output_tokens=30,
            input_tokens=20,
            deltas=21,
            itl_ms=[50.0] * 19 + [500.0],
        ),
        rec(2, 0.2, ttft_ms=30.0, e2e_ms=30.0, output_tokens=1, input_tokens=5, deltas=1),
        rec(3, 1.0, ok=False, error="http_500", e2e_ms=200.0),
        rec(4, -0.5, warmup=True, ttft_ms=1.0, e2e_ms=9000.0, output_tokens=999),
    ]
    # (last token - first token) / (timed tokens - 1): the time after the last token (the
    # terminal event at 510 ms) is not decode time.
    assert records[0].tpot_ms == pytest.approx((500 - 100) / (5 - 1))
    assert records[1].tpot_ms == pytest.approx((1500 - 50) / (21 - 1))
    assert records[2].tpot_ms is None  # one token: no time per *output* token after the first
    assert records[3].tpot_ms is None
    doc = summarize(records, {})
    assert doc["duration_s"] == pytest.approx(2.0)  # window start to the last measured end
    assert (doc["completed"], doc["failed"]) == (3, 1)
    assert doc["request_throughput"] == pytest.approx(3 / 2.0)
    assert doc["output_token_throughput"] == pytest.approx((5 + 30 + 1) / 2.0)
    assert doc["total_token_throughput"] == pytest.approx((5 + 30 + 1 + 10 + 20 + 5) / 2.0)
    assert (doc["input_tokens"], doc["output_tokens"]) == (35, 36)
    assert doc["tpot_ms"]["count"] == 2
    assert doc["tpot_ms"]["mean"] == pytest.approx((100 + 1450 / 20) / 2, abs=1e-3)
    assert doc["errors"] == {"http_500": 1}


def test_stats_goodput_and_slo_parsing() -> None:
    assert stats([])["p50"] is None
    assert stats([1.0, 2.0, 3.0])["max"] == 3.0
    assert set(stats([1.0])) >= STAT_KEYS
    slo = parse_slo("ttft_ms=25,tpot_ms=20")
    assert slo == {"ttft_ms": 25.0, "tpot_ms": 20.0}
    assert meets_slo(_record(1, 0, 11.0), slo)
    assert not meets_slo(_record(1, 0, 26.0), slo)
    records = [_record(i, 0, 10.0 + i) for i in range(30)]
    good = summarize(records, slo)["goodput"]
    assert good["requests"] == 16  # ttft 10..25
    with pytest.raises(ConfigError):
        parse_slo("latency=5")


def test_schedules() -> None:
    constant = [
        a.offset_s
        for a in open_schedule(
            LoadConfig("u", rate=100, arrival="constant", duration_s=1, warmup_s=0)
        )
    ]
    assert len(constant) == 100
    assert constant[:3] == pytest.approx([0.0, 0.01, 0.02])
    gen = arrival_offsets(1000, "poisson", 1.0, seed=1)
    offsets = np.array([next(gen) for _ in range(20000)])
    assert offsets[-1] / 20000 == pytest.approx(1 / 1000, rel=0.03)
    bursty = arrival_offsets(1000, "poisson", 0.25, seed=1)
    gaps = np.diff([next(bursty) for _ in range(20000)])
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(2.0, rel=0.1)  # CV = 1/sqrt(shape)
    config = LoadConfig("u", rate=200, duration_s=1, warmup_s=0.5)
    one = [(a.index, a.offset_s) for a in open_schedule(config)]
    two = sorted((a.index, a.offset_s) for w in range(2) for a in open_schedule(config, w, 2))
    assert one == two
    assert sweep_rates(1, 5, 3) == [2, 3, 4]


def test_client_verdict_says_when_the_client_was_the_bottleneck() -> None:
    busy = ClientCheck(0, wall_s=10, cpu_s=9.8, loop_lag_ms=[0.1] * 100)
    spinning = ClientCheck(1, wall_s=10, cpu_s=9.8, spin_s=6, loop_lag_ms=[0.1] * 100)
    assert verdict([busy], 5, 0.9)["bottleneck"]
    assert "CLIENT-BOUND" in verdict([busy], 5, 0.9)["verdict"]
    assert not verdict([spinning], 5, 0.9)["bottleneck"]
    lagging = ClientCheck(0, wall_s=1, cpu_s=0.6, loop_lag_ms=[20.0] * 10)
    assert verdict([lagging], 5, 0.9)["state"] == "client-bound"  # busy and late: its own


QUIET = {"cores": 2, "seconds": 10.0, "others_cores": 0.05, "steal_cores": 0.0, "bench_cores": 0.4}
BUSY = QUIET | {"others_cores": 1.4}


@pytest.mark.parametrize(
    ("cpu_s", "machine", "state"),
    [
        pytest.param(0.1, None, "busy-machine", id="client-at-10%-unknown-machine"),
        pytest.param(0.1, QUIET, "busy-machine", id="client-at-10%-quiet-machine"),
        pytest.param(0.1, BUSY, "busy-machine", id="client-at-10%-busy-machine"),
        pytest.param(0.4, QUIET, "client-bound", id="client-at-40%-quiet-machine"),
        pytest.param(0.4, BUSY, "busy-machine", id="client-at-40%-busy-machine"),
        pytest.param(0.7, BUSY, "client-bound", id="client-at-70%-busy-machine"),
    ],
)
def test_a_late_client_is_told_from_a_busy_machine(
    cpu_s: float, machine: dict[str, Any] | None, state: str
) -> None:
    """The issue's busy 2-core machine: loop lag high with the client at 7-14 % of a core was
    called CLIENT-BOUND, add --workers. A client that is not busy is held off the CPU."""
    late = ClientCheck(0, wall_s=1, cpu_s=cpu_s, loop_lag_ms=[20.0] * 10)
    client = verdict([late], 5, 0.9, machine=machine)
    assert client["state"] == state
    assert client["bottleneck"] is (state == "client-bound")
    assert client["machine"] == machine
    text = client["verdict"]
    if state == "busy-machine":
        assert text.startswith("BUSY MACHINE: the client was delayed (event-loop lag p99 20.0")
        assert f"while using only {cpu_s:.0%} of a core" in text
        assert "--workers would not help" in text
        if machine is BUSY:
            assert "other processes used 1.40 of the machine's 2 cores" in text
    else:
        assert text.startswith("CLIENT-BOUND")
        assert ("other processes used 1.40" in text) is (machine is BUSY)


def test_a_failing_server_is_never_called_client_bound() -> None:
    """Failures answered at once keep a client busy; the server is named instead."""
    busy = ClientCheck(0, wall_s=1, cpu_s=0.95, loop_lag_ms=[20.0] * 10)
    client = verdict([busy], 5, 0.9, server_failed="12 of the 20 measured requests failed")
    assert client["state"] == "server-failing"
    assert not client["bottleneck"]
    assert client["verdict"].startswith(
        "SERVER FAILING: 12 of the 20 measured requests failed. The client is not judged"
    )
    records = [completed_record(i, 10.0, [1.0]) for i in range(8)]
    records += [make_record(8 + i, ok=False, error="http_500", e2e_ms=1.0) for i in range(12)]
    result = BenchResult(LoadConfig("http://x/v1"), records, [busy])
    assert result.server_failed() == "12 of the 20 measured requests failed (http_500 12)"
    assert BenchResult(LoadConfig("http://x/v1"), records[:12], [busy]).server_failed() is None


def test_client_verdict_flags_a_late_read_even_when_loop_lag_looks_fine() -> None:
    # The one-worker 500 x 50 tokens/s calibration: loop lag p99 under 2 ms, reads 3-5 ms late.
    late = ClientCheck(
        0,
        wall_s=10,
        cpu_s=4,
        loop_lag_ms=[0.1] * 98 + [1.9] * 2,
        read_delay_ms=[0.2] * 95 + [4.0] * 5,
    )
    doc = verdict([late], 5, 0.9, read_delay_threshold_ms=2.0)
    assert doc["bottleneck"]
    assert "client read delay p99 4.0 ms > 2 ms" in doc["verdict"]
    assert doc["read_delay_ms"]["count"] == 100
    on_time = ClientCheck(0, wall_s=10, cpu_s=4, read_delay_ms=[0.2] * 100)
    assert not verdict([on_time], 5, 0.9, read_delay_threshold_ms=2.0)["bottleneck"]
    assert not verdict([ClientCheck(0, wall_s=1)], 5, 0.9)["bottleneck"]  # no canary: no figure
    waited = verdict([on_time], 5, 0.9, pool_wait_ms=[0.0, 0.5, 12.0])
    assert waited["bottleneck"]
    assert "1 requests waited for a pool connection (up to 12 ms)" in waited["verdict"]


async def test_the_canary_reads_stamped_events_and_flags_a_blocked_loop(base_url: str) -> None:
    async def hog() -> None:  # a client that cannot keep up: 8 ms of work every 10 ms
        while True:
            until = time.perf_counter() + 0.008
            while time.perf_counter() < until:  # busy: its own CPU, not a held-off process
                pass
            await asyncio.sleep(0.002)

    config = LoadConfig(
        base_url,
        concurrency=2,
        duration_s=1.0,
        warmup_s=0.1,
        output_tokens=4,
        read_delay_threshold_ms=2.0,
    )
    blocker = asyncio.get_running_loop().create_task(hog())
    try:
        doc = (await run_load(config)).summary()
    finally:
        blocker.cancel()
    delay = doc["client"]["read_delay_ms"]
    assert delay["count"] > 50  # one event every 2 ms over the run
    assert delay["min"] >= 0  # one clock: never read before written
    assert delay["p99"] > 2.0  # events that arrived during a block waited for it
    client = doc["client"]
    # the hog's own CPU makes it CLIENT-BOUND; where others' jobs take the cores and leave
    # it under half a core, the verdict is a busy machine's, with the same reason
    assert client["state"] == "client-bound" or (
        client["state"] == "busy-machine" and client["max_cpu_percent"] < 50
    ), client
    assert "client read delay" in client["verdict"]
    assert doc["client"]["workers"][0]["canary_error"] is None


async def test_without_the_canary_there_is_no_read_delay_figure(base_url: str) -> None:
    config = LoadConfig(
        base_url, concurrency=2, requests=4, duration_s=None, warmup_s=0, canary=False
    )
    doc = (await run_load(config)).summary()
    assert doc["completed"] == 4
    assert doc["client"]["read_delay_ms"]["count"] == 0


async def test_the_cyclic_collector_is_off_while_a_run_measures_and_back_after(
    base_url: str,
) -> None:
    """A collection's pause would be a late send and a late stamp (see Runner.run)."""
    during: list[tuple[str, bool]] = []
    config = LoadConfig(base_url, concurrency=2, duration_s=1.2, warmup_s=0, canary=False)
    assert gc.isenabled()
    doc = (
        await run_load(config, progress=lambda s: during.append((s["phase"], gc.isenabled())))
    ).summary()
    assert doc["completed"] > 0
    running = [enabled for phase, enabled in during if phase != "priming"]
    assert running  # the progress ticker ran inside the run (every 0.5 s)
    assert not any(running)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # the heap frozen for the run is handed back


async def test_garbage_of_failing_requests_is_collected_within_a_budget(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the collector off, failed requests' cyclic garbage (exception -> traceback ->
    frame) must still be bounded: the run collects the young objects past a budget."""
    monkeypatch.setattr(garbage, "GC_YOUNG_BUDGET", 3_000)
    monkeypatch.setattr(garbage, "GC_CHECK_S", 0.05)
    started: list[tuple[int, bool]] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append((info["generation"], gc.isenabled()))

    gc.callbacks.append(on_gc)
    try:
        config = LoadConfig(
            base_url,
            concurrency=4,
            duration_s=1.5,
            warmup_s=0,
            canary=False,
            headers={"x-mock-fault": "disconnect:2"},
        )
        doc = (await run_load(config)).summary()
    finally:
        gc.callbacks.remove(on_gc)
    assert doc["completed"] == 0
    assert sum(doc["errors"].values()) > 50
    assert (1, False) in started  # the run's own collection, automatic collection still off


async def test_auto_workers_follow_the_load_and_the_cores(base_url: str) -> None:
    assert auto_workers(500, cores=2) == 2  # 3 wanted, 2 cores
    assert auto_workers(500, cores=None) == 3  # Ray: the load decides
    assert auto_workers(16, cores=8) == 1
    assert auto_workers(0, cores=4) == 1
    big = await resolve_workers(LoadConfig("http://x/v1", concurrency=500, workers=0), cores=2)
    assert big.workers == 2
    assert big.facts["workers_auto"] == {
        "streams_in_flight": 500.0,
        "usable_cores": 2,
        "workers": 2,
        "streams_per_worker": 200,
    }
    small = await resolve_workers(LoadConfig("http://x/v1", concurrency=16, workers=0), cores=4)
    assert small.workers == 1
    fixed = LoadConfig("http://x/v1", concurrency=500, workers=1)
    assert await resolve_workers(fixed, cores=2) is fixed
    # Open loop: in flight = rate x the e2e of one probe request (a fast mock: well under 1).
    opened = await resolve_workers(LoadConfig(base_url, rate=100, workers=0), cores=2)
    assert opened.workers == 1
    assert opened.facts["workers_auto"]["streams_in_flight"] < 100


def test_workers_flag_takes_auto_or_a_count() -> None:
    import argparse  # noqa: PLC0415

    from engine.cli.bench import add_arguments  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).workers == AUTO_WORKERS
    assert parser.parse_args(["--workers", "auto"]).workers == AUTO_WORKERS
    assert parser.parse_args(["--workers", "3"]).workers == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "0"])


def test_ray_with_auto_workers_counts_by_the_load_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.distributed.loadtest  # noqa: PLC0415 - the optional extra, installed for tests
    from tests.conftest import bench_main as main  # noqa: PLC0415

    calls: list[tuple[LoadConfig, int]] = []

    def fake(config: LoadConfig, *, address: str | None, workers: int, stop: Stop) -> BenchResult:
        assert stop.halt is None
        calls.append((config, workers))
        return combine(config, [WorkerResult(0, [], ClientCheck(0))])

    monkeypatch.setattr(engine.distributed.loadtest, "run_load_on_ray", fake)
    argv = [
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--ray",
        "local",
        "--requests",
        "1",
        "-q",
        "--no-save",
    ]
    assert main([*argv, "--concurrency", "450"]) == 1  # nothing completed (a fake run)
    assert main([*argv, "--concurrency", "450", "--workers", "2"]) == 1
    assert [workers for _, workers in calls] == [3, 2]  # the cluster's cores are not counted


def test_prompts_synthetic_and_jsonl(tmp_path: Path) -> None:
    source = Workload(LoadConfig("u", endpoint="chat", input_tokens=30, output_tokens=7))
    body = source.body(3)
    assert body["max_completion_tokens"] == 7
    assert len(body["messages"][0]["content"].split()) == 24
    assert source.body(3) == body
    assert source.body(4) != body
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"input": "hi"}\n\n{"custom_id": "a", "body": {"input": "yo"}}\n')
    assert load_bodies(path, "m") == [{"input": "hi", "model": "m"}, {"input": "yo", "model": "m"}]


def test_sweep_runs_single_saturated_and_rates_between(paced: str) -> None:
    config = LoadConfig(
        paced,
        concurrency=8,
        duration_s=0.5,
        warmup_s=0.1,
        output_tokens=4,
        sweep_steps=1,
        headers={"x-mock-ttft-ms": "20", "x-mock-itl-ms": "2"},
    )
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        results = runner.run(run_sweep(config))
    docs = [r.summary() for r in results]
    assert [d["label"] for d in docs][:2] == ["sync", "throughput"]
    assert len(docs) == 3
    assert docs[2]["mode"] == "open"
    assert docs[1]["request_throughput"] > docs[0]["request_throughput"]


async def test_without_usage_output_tokens_are_the_counted_deltas(
    base_url: str, tmp_path: Path
) -> None:
    prompts = tmp_path / "chat.jsonl"
    body = {
        "messages": [{"role": "user", "content": "count with me"}],
        "max_completion_tokens": 7,
        "stream_options": {"include_usage": False},
    }
    prompts.write_bytes(orjson.dumps(body) + b"\n")
    config = LoadConfig(
        base_url,
        endpoint="chat",
        prompts_file=str(prompts),
        concurrency=2,
        requests=6,
        duration_s=None,
        warmup_s=0,
    )
    result = await run_load(config)
    doc = result.summary()
    assert doc["completed"] == 6
    for record in result.measured:
        assert record.input_tokens is None  # the server sent no usage ...
        assert record.output_tokens == record.deltas == 7  # ... so the deltas were counted
    assert (doc["output_tokens"], doc["input_tokens"]) == (42, 0)
    assert doc["tpot_ms"]["count"] == 6


def test_cli_chat_endpoint_end_to_end(paced_mock: MockProcess, tmp_path: Path) -> None:
    from tests.conftest import bench_main as main  # noqa: PLC0415

    before = paced_mock.stats.requests.get("/v1/chat/completions", 0)
    out = tmp_path / "chat.json"
    load = ["--base-url", paced_mock.base_url, "--endpoint", "chat", "--requests", "12"]
    answers = ["--output-tokens", "6", "--input-tokens", "20", *MOCK_5_1]
    flags = bench_flags(*load, *answers, "--concurrency", "3", "--warmup", "0.2", out=out)
    assert main(flags) == 0
    doc = orjson.loads(out.read_bytes())
    assert doc["config"]["endpoint"] == "chat"
    assert (doc["completed"], doc["failed"]) == (12, 0)
    assert doc["output_tokens"] == 12 * 6  # usage (include_usage is on by default)
    assert doc["input_tokens"] == 12 * 20  # the mock counts words + template, as we do
    assert doc["ttft_ms"]["min"] >= 5  # the server's TTFT, never less
    assert doc["itl_ms"]["count"] == 12 * 5
    sent = paced_mock.stats.requests.get("/v1/chat/completions", 0) - before
    assert sent >= 12 + doc["warmup"]["requests"]  # + primers; nothing went to /responses


def test_base_url_with_an_api_key_that_never_reaches_a_report(
    auth_mock_server: MockServerThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.conftest import bench_main as main  # noqa: PLC0415

    outputs = [tmp_path / name for name in ("r.json", "r.csv", "r.html")]
    flags = ["-o", str(outputs[0]), "--csv", str(outputs[1]), "--html", str(outputs[2])]
    base = [
        "--base-url",
        auth_mock_server.base_url,
        "--requests",
        "8",
        "--concurrency",
        "2",
        "--warmup",
        "0",
        "--output-tokens",
        "4",
        "-q",
        "--no-save",
        *flags,
    ]
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    assert main(base) == 0
    doc = orjson.loads(outputs[0].read_bytes())
    assert (doc["completed"], doc["failed"]) == (8, 0)
    assert doc["config"]["api_key_set"] is True
    printed = capsys.readouterr()
    for text in (*(p.read_text() for p in outputs), printed.out, printed.err):
        assert TEST_API_KEY not in text
    wrong = "sk-wrong-key-" + "x" * 20
    assert main([*base, "--api-key", wrong]) == 2  # the first request's 401 ends the bench
    doc = orjson.loads(outputs[0].read_bytes())
    assert (doc["completed"], doc["failed"]) == (8, 0)  # nothing written over the good run
    printed = capsys.readouterr()
    assert "error: the server refused the API key" in printed.err
    for text in (*(p.read_text() for p in outputs), printed.out, printed.err):
        assert wrong not in text
        assert TEST_API_KEY not in text


def test_cli_sweep_writes_json_csv_and_html(paced: str, tmp_path: Path) -> None:
    from tests.conftest import bench_main as main  # noqa: PLC0415

    folder = tmp_path / "sweep"
    out, table, page = folder / "result.json", folder / "requests.csv", folder / "report.html"
    assert (
        main(
            [
                "--base-url",
                paced,
                "--sweep",
                "1",
                "--concurrency",
                "4",
                "--duration",
                "0.5",
                "--warmup",
                "0.1",
                "--output-tokens",
                "4",
                "--header",
                "x-mock-ttft-ms: 20",
                "--header",
                "x-mock-itl-ms: 2",
                "-q",
                "--output-dir",
                str(folder),
            ]
        )
        == 0
    )
    doc = orjson.loads(out.read_bytes())
    assert (doc["kind"], doc["tool"], doc["schema_version"]) == ("sweep", "stream-engine bench", 1)
    runs = doc["runs"]
    assert [run["label"] for run in runs][:2] == ["sync", "throughput"]
    assert len(runs) == 3
    assert runs[2]["label"].startswith("rate ")
    assert [run["mode"] for run in runs] == ["closed", "closed", "open"]
    for run in runs:
        assert run.keys() >= SCHEMA_KEYS
        assert run["completed"] > 0
    with table.open() as file:
        rows = list(csv.DictReader(file))
    assert {row["run"] for row in rows} == {run["label"] for run in runs}
    assert len(rows) == sum(run["completed"] + run["failed"] for run in runs)
    text = page.read_text()
    for n, run in enumerate(runs):
        assert f'<h2 id="run{n}-">{run["label"]}</h2>' in text
    # the curve, then per run: 4 distributions (TTFT to text is TTFT here), timeline, outcomes
    check_html_in_chromium(page, tmp_path, plots=1 + 3 * 6)


def test_live_progress_gets_snapshots_from_every_worker(paced: str) -> None:
    snapshots: list[dict[str, Any]] = []
    config = LoadConfig(
        paced,
        concurrency=4,
        duration_s=1.2,
        warmup_s=0.2,
        output_tokens=4,
        workers=2,
        headers={"x-mock-ttft-ms": "5", "x-mock-itl-ms": "1"},
    )
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(run_load(config, progress=snapshots.append))
    assert {s["worker"] for s in snapshots} == {0, 1}
    for snap in snapshots:
        assert snap.keys() == SNAPSHOT_KEYS
    # every phase, in order, from each worker: priming (relayed before "ready") to done
    for worker in (0, 1):
        phases = [s["phase"] for s in snapshots if s["worker"] == worker]
        assert phases[0] == "priming"
        assert phases[-1] == "done"
        assert [PHASES.index(p) for p in phases] == sorted(PHASES.index(p) for p in phases)
        assert "measuring" in phases
    last = {s["worker"]: s for s in snapshots}
    doc = result.summary()
    # the last snapshots are the final counts: a display never ends on a stale tick
    assert sum(int(s["done"]) for s in last.values()) == doc["completed"]
    assert sum(int(s["failed"]) for s in last.values()) == doc["failed"]
    console = Console(file=io.StringIO(), width=200)
    with LiveProgress(console, title="bench") as live:
        for snap in snapshots:
            live(snap)
        view = live.view()
    assert view.phase == "done"
    assert f"done {doc['completed']} " in view.counts
    assert "TTFT p50" in view.counts


def test_cli_end_to_end_with_the_embedded_mock(tmp_path: Path) -> None:
    """As a user runs it: results land in the run folder (here --output-dir)."""
    folder = tmp_path / "run"
    out, table, page = folder / "result.json", folder / "requests.csv", folder / "report.html"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_BASE_URL", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.loadtest",
            "--duration",
            "1.5",
            "--warmup",
            "0.3",
            "--concurrency",
            "4",
            "--output-tokens",
            "16",
            "--slo",
            "ttft_ms=500,tpot_ms=50",
            "--output-dir",
            str(folder),
        ],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    doc = orjson.loads(out.read_bytes())
    assert doc.keys() >= SCHEMA_KEYS
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert doc[key].keys() >= STAT_KEYS
    assert doc["goodput"]["fraction"] == 1.0
    assert "api_key" not in doc["config"]
    with table.open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == doc["completed"] + doc["failed"]
    stderr = proc.stderr.decode()
    assert "TTFT" in stderr
    assert f"results: {folder}" in stderr
    check_html_in_chromium(page, tmp_path)


def check_html_in_chromium(page: Path, tmp_path: Path, plots: int | None = None) -> None:
    """The report renders offline in a real browser (tests/test_loadtest_html.py drives it):
    every chart drawn, no console error, no request but the file. `plots`: the exact number
    of charts, when the caller knows it."""
    from tests.test_loadtest_html import check_in_browser  # noqa: PLC0415

    seen = check_in_browser(page, tmp_path / "shot.png")
    if plots is not None:
        assert len(seen["charts"]) == plots, seen["charts"]


def test_calibration_matches_every_request_to_its_server_write_stamp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from engine.loadtest.calibrate import main  # noqa: PLC0415

    assert (
        main(
            [
                "--streams",
                "8",
                "--duration",
                "1.5",
                "--warmup",
                "0.3",
                "--tokens",
                "5",
                "--ttft-ms",
                "20",
                "--itl-ms",
                "5",
            ]
        )
        == 0
    )
    report = orjson.loads(capsys.readouterr().out)
    assert report["completed"] > 0
    assert report["client_read_delay_ms"]["count"] == report["completed"]
    assert report["client_read_delay_ms"]["min"] >= 0  # one clock: never read before written
    assert report["canary_read_delay_ms"]["count"] > 0  # the bench's own estimate beside it
    assert report["workers"] == 1  # auto: 8 streams need one worker
