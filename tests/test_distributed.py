"""The Ray adapter on a local Ray instance (127.0.0.1), against the real mock endpoint.

One Ray instance serves the whole module: `ray.init(num_cpus=4, include_dashboard=False)`,
actors with fractional CPUs (on 2 cores, whole-CPU actors starve each other and hang).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import ray

from engine.batch import BatchConfig, Endpoint, Shard, run_batch
from engine.distributed import (
    LeasedLimiter,
    limiter_actor,
    run_batch_on_ray,
    run_load_on_ray,
)
from engine.distributed.batch import part_paths
from engine.loadtest.config import LoadConfig
from engine.loadtest.interrupts import Halt, Stop
from engine.loadtest.workers import run_load
from tests.conftest import batch_main, bench_main
from tests.helpers import bench_flags
from tests.netfront import Front
from tests.test_batch import (
    FAST_RETRY,
    PROJECT,
    SLOW,
    assert_exactly_once,
    make_input,
    records,
)
from tests.test_bench_bad_day import alive, descendants, start_bench, until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.conftest import MockFactory

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def job(tmp_path: Path, base_url: str, **kw: Any) -> BatchConfig:
    kw.setdefault("concurrency", 64)
    kw.setdefault("output_path", tmp_path / "out.jsonl")
    return BatchConfig(
        input_path=tmp_path / "in.jsonl", endpoints=[Endpoint(base_url)], retry=FAST_RETRY, **kw
    )


def test_batch_on_three_actors_with_faults_ends_exactly_once(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    faults = {"429": 0.03, "500": 0.03, "disconnect": 0.02, "malformed": 0.02}
    mock = mock_factory(output_tokens=16, faults=faults, seed=7, retry_after_s=0.01)
    with make_input(tmp_path / "in.jsonl", 2000).open("ab") as f:
        f.write(b'not json\n{"custom_id": "bad", "method": "POST"}\n')
    summary = run_batch_on_ray(job(tmp_path, mock.base_url), address=None, workers=3)
    out, err = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    assert_exactly_once({f"req-{i}" for i in range(2000)} | {"line-2001", "bad"}, out, err)
    assert summary.succeeded + summary.failed == 2000
    assert (summary.invalid, summary.invalid_written) == (2, 2)
    assert [p.split(":")[0] for p in summary.problems] == ["line 2001", "line 2002"]
    # Malformed and cut streams are sent again too (nothing of them reached the output).
    assert summary.retries_by_kind["ProtocolError"] > 0
    assert summary.retries_by_kind["StreamTruncated"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.jsonl",
        "out.errors.jsonl",
        "out.jsonl",
    ]  # parts merged, gone
    # Each record sent once, plus the retries the engines counted: nothing else reached it.
    assert sum(mock.stats.requests.values()) == 2000 + summary.retries
    # Again: the job is complete, nothing is sent and no actor is needed.
    before = sum(mock.stats.requests.values())
    again = run_batch_on_ray(job(tmp_path, mock.base_url), address=None, workers=3)
    assert (again.already_done, again.finished) == (2002, 0)
    assert sum(mock.stats.requests.values()) == before


def test_resume_merges_parts_of_a_crashed_run_and_sends_only_the_rest(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    mock = mock_factory(output_tokens=8)
    make_input(tmp_path / "in.jsonl", 300)
    # A crashed 3-actor run: shard 1 finished its part, the driver died before the merge,
    # and its last line is torn; shard 2 had merged into the final files earlier.
    part1, _ = part_paths(tmp_path / "out.jsonl", 1, 3)
    asyncio.run(run_batch(job(tmp_path, mock.base_url, shard=Shard(1, 3), output_path=part1)))
    asyncio.run(run_batch(job(tmp_path, mock.base_url, shard=Shard(2, 3))))
    done_before = {
        r["custom_id"] for path in (part1, tmp_path / "out.jsonl") for r in records(path)
    }
    part1.write_bytes(part1.read_bytes() + b'{"id": "batch_req_torn", "custom_')
    sent_before = sum(mock.stats.requests.values())
    summary = run_batch_on_ray(job(tmp_path, mock.base_url), address=None, workers=2)
    assert_exactly_once(
        {f"req-{i}" for i in range(300)}, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    )
    assert summary.finished == 300 - len(done_before)
    assert sum(mock.stats.requests.values()) - sent_before == 300 - len(done_before)
    assert not part1.exists()


@ray.remote(num_cpus=0.25)
def _acquire_times(actor: Any, count: int, lease_ttl_s: float) -> list[float]:
    """One shard's limiter: the CLOCK_MONOTONIC instant of each grant (shared on one host)."""

    async def main() -> list[float]:
        limiter = LeasedLimiter(actor, lease_size=8, lease_ttl_s=lease_ttl_s)
        times = []
        for _ in range(count):
            await limiter.acquire(10)
            times.append(time.monotonic())
        await limiter.close()
        return times

    return asyncio.run(main())


def test_global_rpm_holds_across_actors_in_every_window() -> None:
    window_s, ttl_s, rpm = 1.0, 0.25, 20
    actor = limiter_actor(rpm, None, window_s=window_s, lease_ttl_s=ttl_s)
    grants = sorted(
        t
        for part in ray.get([_acquire_times.remote(actor, 20, ttl_s) for _ in range(3)])
        for t in part
    )
    assert len(grants) == 60
    # Each grant is a send: no window of window_s may hold more than rpm of them.
    for i, start in enumerate(grants):
        in_window = sum(1 for t in grants[i:] if t < start + window_s)
        assert in_window <= rpm, f"{in_window} grants in the window from {start}"


def test_distributed_bench_merges_exactly_the_sum_of_its_parts(mock_factory: MockFactory) -> None:
    mock = mock_factory(ttft_ms=5.0, itl_ms=1.0, output_tokens=8)
    config = LoadConfig(
        base_url=mock.base_url, concurrency=8, requests=240, warmup_s=0.3, output_tokens=8
    )
    result = run_load_on_ray(config, address=None, workers=3)
    doc = result.summary()
    per_worker = Counter(r.worker for r in result.measured)
    assert sorted(per_worker) == [0, 1, 2]
    assert sum(per_worker.values()) == doc["completed"] + doc["failed"] == 240
    assert doc["failed"] == 0
    # Every request the actors sent (primers, warm-up, measured) reached the server once.
    assert sum(mock.stats.requests.values()) == result.primed + len(result.records)
    assert doc["output_tokens"] == sum(r.output_tokens for r in result.measured) == 240 * 8
    assert doc["config"]["workers"] == 3
    assert [c.worker for c in result.checks] == [0, 1, 2]


def test_a_workload_on_two_actors_sends_what_one_process_sends(
    mock_factory: MockFactory,
) -> None:
    """Lengths, shared prefixes and conversations follow from the seed and the request's
    number alone: two actors together start the very sessions one process starts."""
    mock = mock_factory(ttft_ms=2.0, itl_ms=1.0)
    config = LoadConfig(
        base_url=mock.base_url,
        rate=40,
        arrival="constant",
        duration_s=1.0,
        warmup_s=0.0,
        turns=2,
        input_lengths="20-80",
        output_lengths="4-12",
        shared_prefix_tokens=50,
        prefix_groups=2,
        canary=False,
    )

    def first_turns(result: Any) -> set[tuple[Any, ...]]:
        return {
            (r.session, r.asked_input_tokens, r.asked_output_tokens, r.prefix_group, r.ok)
            for r in result.measured
            if r.turn == 0
        }

    with asyncio.Runner() as runner:
        one = runner.run(run_load(config.with_(workers=1)))
    two = run_load_on_ray(config, address=None, workers=2)
    assert {r.worker for r in two.measured} == {0, 1}
    sent = first_turns(one)
    assert len(sent) == 40
    assert first_turns(two) == sent
    assert all(ok for *_, ok in sent)
    doc = two.summary()
    assert [row["turn"] for row in doc["turns"]] == [0, 1]
    assert doc["lengths"]["output"]["asked"]["min"] >= 4


def test_cli_batch_and_bench_on_ray(
    tmp_path: Path, mock_factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    mock = mock_factory(output_tokens=8)
    make_input(tmp_path / "in.jsonl", 50)
    argv = [
        str(tmp_path / "in.jsonl"),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--base-url",
        mock.base_url,
        "--ray",
        "local",
        "--workers",
        "2",
        "--json",
    ]
    assert batch_main(argv) == 0
    assert len(records(tmp_path / "out.jsonl")) == 50
    assert '"succeeded":50' in capsys.readouterr().out
    assert batch_main([*argv[:5], "--workers", "2"]) == 2  # --workers needs --ray
    assert "--workers goes with --ray" in capsys.readouterr().err
    result = tmp_path / "bench.json"
    ray = ["--base-url", mock.base_url, "--ray", "local", "--workers", "2"]
    with Front.proxy() as proxy:  # the network options reach the actors (NetworkOptions pickles)
        load = ["--proxy", proxy.url, "--requests", "40", "--warmup", "0.2"]
        assert bench_main(bench_flags(*ray, *load, out=result)) == 0
    assert '"completed":40' in result.read_text().replace(" ", "")
    assert proxy.served >= 40


def test_a_stop_reaches_every_actor_and_the_result_keeps_what_they_measured(
    mock_factory: MockFactory,
) -> None:
    """A stop during the load ends it on every actor as on one machine: sending stops, the
    requests in flight end, the merged result says why (the long run is never waited out)."""
    mock = mock_factory(ttft_ms=20.0, itl_ms=2.0, output_tokens=64)
    config = LoadConfig(mock.base_url, concurrency=4, duration_s=120, warmup_s=0.2, canary=False)
    stop = Stop()

    def stop_once_measuring() -> None:
        until(lambda: sum(mock.stats.requests.values()) >= 40, 60.0, "40 requests sent")
        stop(Halt.signal(signal.SIGTERM))

    watcher = threading.Thread(target=stop_once_measuring)
    watcher.start()
    started = time.monotonic()
    result = run_load_on_ray(config, address=None, workers=2, stop=stop)
    watcher.join()
    assert time.monotonic() - started < 100  # not the 120 s asked for
    doc = result.summary()
    assert doc["interrupted"] == {"by": "SIGTERM", "message": Halt.signal(signal.SIGTERM).message}
    assert doc["completed"] >= 1
    assert sorted({r.worker for r in result.measured}) == [0, 1]
    assert doc["failed"] == 0  # ended within the grace, not cut off
    # Nothing sent after the stop but what was in flight: one request per user at most.
    assert sum(mock.stats.requests.values()) <= result.primed + len(result.records)


def test_ctrl_c_ends_a_bench_on_ray_with_its_run_folder(
    tmp_path: Path, mock_factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's SIGINT handler says the stop; the driver tells the actors."""
    mock = mock_factory(ttft_ms=20.0, itl_ms=2.0, output_tokens=64)

    def interrupt_once_measuring() -> None:
        until(lambda: sum(mock.stats.requests.values()) >= 40, 60.0, "40 requests sent")
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_once_measuring)
    watcher.start()
    flags = ["--base-url", mock.base_url, "--ray", "local", "--workers", "2"]
    load = ["--duration", "120", "--warmup", "0.2", "--concurrency", "4", "--no-canary"]
    status = bench_main([*flags, *load, "-q", "--output-dir", str(tmp_path / "run")])
    watcher.join()
    assert status == 130
    assert "interrupted: SIGINT received" in capsys.readouterr().err
    doc = orjson.loads((tmp_path / "run" / "result.json").read_bytes())
    assert doc["interrupted"]["by"] == "SIGINT"
    assert doc["completed"] >= 1


def test_sigterm_ends_a_bench_on_its_own_ray_instance_and_leaves_no_process(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    """In a process of its own, with a private Ray instance: ray.init makes SIGTERM a
    sys.exit, and the command's own handler must be back in force for the load."""
    mock = mock_factory(ttft_ms=20.0, itl_ms=2.0, output_tokens=64)
    ray = ["--base-url", mock.base_url, "--ray", "local", "--workers", "2"]
    proc, err = start_bench(tmp_path, *ray)
    try:
        until(
            lambda: proc.poll() is not None or sum(mock.stats.requests.values()) >= 40,
            120.0,
            "40 requests sent by the actors",
        )
        assert proc.poll() is None, err.read_text()
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.read_text()
    assert status == 143, text
    assert "Traceback" not in text
    assert "interrupted: SIGTERM received" in text
    doc = orjson.loads((tmp_path / "run" / "result.json").read_bytes())
    assert doc["interrupted"]["by"] == "SIGTERM"
    assert doc["config"]["facts"]["ray"]["actors"] == 2
    assert doc["completed"] >= 1
    until(lambda: not any(alive(pid) for pid in children), 30.0, f"Ray's processes {children} gone")


def test_sigterm_stops_a_batch_on_ray_and_the_rerun_completes_it_exactly_once(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    """Ray makes SIGTERM a bare sys.exit in its driver (exit 15, no word); the batch's own
    handler is kept: SIGTERM stops the job as Ctrl-C does, and the parts are merged on resume."""
    slow, fast = mock_factory(SLOW), mock_factory(output_tokens=16)
    path = make_input(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "engine", "batch", str(path), "-o", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    ray_flags = ["--ray", "local", "--workers", "2", "--concurrency", "4"]
    proc = subprocess.Popen(
        [*argv, *ray_flags, "--base-url", slow.base_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def parts_lines() -> int:
        return sum(p.read_bytes().count(b"\n") for p in tmp_path.glob("out.shard-*.jsonl"))

    try:
        until(lambda: proc.poll() is not None or parts_lines() >= 4, 120.0, "4 records done")
        assert proc.poll() is None, "the batch ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode()
    assert proc.returncode == 143, text
    assert "interrupted (SIGTERM); run the same command to resume" in text
    assert "Traceback" not in text
    done = subprocess.run(  # the same command: on Ray, leftover parts merged first
        [*argv, *ray_flags, "--base-url", fast.base_url],
        check=False,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert_exactly_once({f"req-{i}" for i in range(200)}, out, tmp_path / "out.errors.jsonl")
    assert not list(tmp_path.glob("out.shard-*"))  # the parts were merged
