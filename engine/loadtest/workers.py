"""`run_load` and `run_sweep`: the library entry points, in one process or N.

With `workers > 1` every worker is a spawned process with its own uvloop, so N cores read
streams in parallel. Each primes its own connections, says "ready", and all start at one
`perf_counter_ns` instant chosen by the parent (CLOCK_MONOTONIC is shared by every process
on a Linux machine). They split the closed-loop users and request count, or take every N-th
arrival of the one global schedule, and send their records back to be merged exactly.

A stop (`engine.loadtest.interrupts`) is forwarded to the workers as SIGTERM: each ends its
load as its end would and sends back what it measured. A terminal's Ctrl-C is the parent's
(the workers ignore SIGINT), and a worker dies with its parent, even a parent killed hard.

`workers=AUTO_WORKERS` picks the count at run time: one worker per `STREAMS_PER_WORKER`
streams in flight, at most one per usable core. One loop reading 500 streams x 50 tokens/s
read first tokens 3-5 ms late at p99; two loops of 250 each stayed within 1.3 ms (the
calibration in docs/loadtest.md), so a large load gets the cores it needs by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from engine.client import Engine, RetryPolicy
from engine.errors import EngineError, JobFailed
from engine.loadtest.canary import CanaryProcess
from engine.loadtest.config import AUTO_WORKERS
from engine.loadtest.interrupts import (
    Halt,
    Interrupted,
    Stop,
    on_signals,
    redacted_job_failure,
)
from engine.loadtest.result import BenchResult, combine
from engine.loadtest.runner import PRIME_LIMIT_S, Progress, Runner, WorkerResult
from engine.loadtest.selfcheck import MachineWatch
from engine.loadtest.shapes import sweep_rates
from engine.loadtest.workload import Workload
from engine.redaction import secret_values
from engine.runtime import end_with_parent, loop_factory

if TYPE_CHECKING:
    from collections.abc import Iterator

    from engine.loadtest.config import LoadConfig

START_MARGIN_S = 0.05  # from "all ready" to the common start: time to deliver "go"
READY_TIMEOUT_S = 120.0
# Streams one worker reads within 2 ms at p99: 250 x 50 tokens/s was measured to (see
# docs/loadtest.md), 500 was not; 200 leaves room for faster token rates.
STREAMS_PER_WORKER = 200
PROBE_FALLBACK_S = 1.0  # open loop, the probe request failed: assume a 1 s stream


class WorkerFailed(EngineError):
    """A worker process died or raised; carries its traceback."""


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def auto_workers(streams: float, cores: int | None) -> int:
    """One worker per STREAMS_PER_WORKER streams in flight, at most `cores` (None: no cap)."""
    wanted = max(1, math.ceil(streams / STREAMS_PER_WORKER))
    return wanted if cores is None else max(1, min(wanted, cores))


async def probe_e2e_s(config: LoadConfig) -> float:
    """The e2e of one request of the load (open loop: in flight = rate x e2e). It is the
    run's first request, so a job-level failure on it ends the run (`JobFailed`)."""
    engine = Engine(
        config.base_url,
        api_key=config.api_key,
        max_connections=1,
        retry=RetryPolicy(0),
        headers=config.headers,
        timeouts=config.timeouts,
        **config.network.engine_options(),
    )
    body = Workload(config).body(-1)
    async with engine:
        try:
            async with asyncio.timeout(PRIME_LIMIT_S):
                result = await engine.run(body, endpoint=config.endpoint)
        except EngineError as exc:  # first: the engine's own timeouts are TimeoutErrors too
            url = engine.url_for(body, config.endpoint)[0]
            failed = redacted_job_failure(exc, url, secret_values(config.api_key, config.headers))
            if failed is not None:
                raise failed from None
            return PROBE_FALLBACK_S
        except TimeoutError:
            return PROBE_FALLBACK_S
    return result.e2e_s


async def resolve_workers(
    config: LoadConfig, cores: int | None = None, *, capped: bool = True
) -> LoadConfig:
    """`config` with AUTO_WORKERS replaced by a count; the choice goes into its facts.

    `capped=False` (Ray: the cluster's cores are not ours to count) lets the load decide."""
    if config.workers != AUTO_WORKERS:
        return config
    if not capped:
        cores = None
    elif cores is None:
        cores = usable_cores()
    if config.open_loop:
        assert config.rate is not None  # noqa: S101 - open_loop says so
        needed = cores is None or cores > 1  # one core: one worker, whatever the load
        streams = config.rate * (await probe_e2e_s(config) if needed else 0.0)
    else:
        streams = float(config.concurrency)
    workers = auto_workers(streams, cores)
    facts = config.facts | {
        "workers_auto": {
            "streams_in_flight": round(streams, 1),
            "usable_cores": cores,
            "workers": workers,
            "streams_per_worker": STREAMS_PER_WORKER,
        }
    }
    return config.with_(workers=workers, facts=facts)


async def start_canary(stack: contextlib.AsyncExitStack) -> str:
    """Start a canary server (in a thread: it waits for the child's ready line) until `stack`
    closes; returns its URL."""
    canary = CanaryProcess()
    url = (await asyncio.to_thread(canary.__enter__)).url
    stack.push_async_callback(asyncio.to_thread, canary.__exit__)
    return url


async def run_load(
    config: LoadConfig,
    progress: Progress | None = None,
    canary_url: str | None = None,
    stop: Stop | None = None,
) -> BenchResult:
    """Run one load test and return every record, merged and ready to report.

    With `config.canary` a canary server is started for the run unless `canary_url` names
    one already running. `stop` ends the load early (the result keeps what it measured and
    says why); before the load began it raises `Interrupted`."""
    stop = stop or Stop()
    config = await resolve_workers(config)
    machine = MachineWatch()  # from the common start to the last record: the load's own time
    async with contextlib.AsyncExitStack() as stack:
        if config.canary and canary_url is None:
            canary_url = await start_canary(stack)
        if config.workers == 1:
            async with Runner(config, progress=progress, canary_url=canary_url, stop=stop) as one:
                await one.prime()
                machine.start()
                parts = [await one.run(time.perf_counter_ns() + int(START_MARGIN_S * 1e9))]
                machine.stop()
        else:
            # The workload's files read here first: a bad one is one ConfigError, not a
            # traceback from every worker.
            Workload(config)
            parts = await asyncio.to_thread(
                run_processes, config, progress, canary_url, stop, machine
            )
    result = combine(config, parts, config.label)
    result.halt = stop.halt or result.halt  # the command's reason, not the one it forwarded
    result.machine = machine.share
    return result


def _sweep_segments(config: LoadConfig, done: list[BenchResult]) -> Iterator[LoadConfig]:
    """The sweep's loads in order; the rates between wait for the first two results."""
    yield config.with_(rate=None, concurrency=1, label="sync")
    yield config.with_(rate=None, label="throughput")
    low = done[0].summary()["request_throughput"]
    high = done[1].summary()["request_throughput"]
    for rate in sweep_rates(low, high, config.sweep_steps):
        yield config.with_(rate=rate, label=f"rate {rate:.2f}/s")


async def run_sweep(
    config: LoadConfig, progress: Progress | None = None, stop: Stop | None = None
) -> list[BenchResult]:
    """GuideLLM's sweep: one stream, then saturation, then `sweep_steps` rates in between.
    A stop ends it after the segment it came in: the segments run so far are kept."""
    stop = stop or Stop()
    results: list[BenchResult] = []
    async with contextlib.AsyncExitStack() as stack:
        url = await start_canary(stack) if config.canary else None  # one for every segment
        for segment in _sweep_segments(config, results):
            try:
                results.append(await run_load(segment, progress, url, stop))
            except Interrupted:  # in a segment's priming: the ones before it are kept
                if not results:
                    raise
                break
            if results[-1].halt is not None:
                break
    return results


def run_processes(
    config: LoadConfig,
    progress: Progress | None,
    canary_url: str | None = None,
    stop: Stop | None = None,
    machine: MachineWatch | None = None,
) -> list[WorkerResult]:
    """Spawn the workers, start them together, relay progress, collect their results.
    A stop is forwarded to each worker as SIGTERM; `machine` watches from the start to the
    last result (the workers still alive, so their CPU is theirs, not others')."""
    stop = stop or Stop()
    machine = machine or MachineWatch()
    ctx = mp.get_context("spawn")
    n = config.workers
    pipes = [ctx.Pipe() for _ in range(n)]
    procs = [
        ctx.Process(
            target=worker_main,
            args=(config, i, n, child, canary_url, os.getpid()),
            daemon=True,
            name=f"bench-worker-{i}",
        )
        for i, (_, child) in enumerate(pipes)
    ]
    for proc in procs:
        proc.start()
    for _, child in pipes:
        child.close()  # the child holds its end: a dead worker is then EOF, not a silent wait
    conns = [parent for parent, _ in pipes]

    def forward(_halt: Halt, _times: int) -> None:
        for proc in procs:
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    try:
        with stop.listening(forward):
            deadline = time.monotonic() + READY_TIMEOUT_S
            for conn in conns:
                _expect(conn, "ready", deadline - time.monotonic(), stop, progress)
            if stop.halt is not None:
                raise Interrupted(stop.halt)
            machine.start()
            start_ns = time.perf_counter_ns() + int(START_MARGIN_S * 1e9)
            for conn in conns:
                conn.send(("go", start_ns))
            results: dict[int, WorkerResult] = {}
            while len(results) < n:
                for ready in wait([c for i, c in enumerate(conns) if i not in results]):
                    assert isinstance(ready, Connection)  # noqa: S101 - wait() returns ours
                    tag, payload = _recv(ready, stop)
                    if tag == "progress" and progress is not None:
                        progress(payload)
                    elif tag == "done":
                        results[payload.worker] = payload
            machine.stop()
            return [results[i] for i in range(n)]
    finally:
        for conn in conns:  # a worker still waiting for "go" ends at once
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        for conn in conns:
            conn.close()


def _recv(conn: Connection, stop: Stop) -> tuple[str, Any]:
    """A worker's next message; its failure raised here, as the worker raised it."""
    try:
        tag, payload = conn.recv()
    except EOFError:
        if stop.halt is not None:  # a SIGTERM before its handler was in: nothing measured
            raise Interrupted(stop.halt) from None
        raise WorkerFailed("a bench worker exited without a result") from None
    if tag == "error":
        raise WorkerFailed(f"a bench worker failed:\n{payload}")
    if tag == "failed":
        raise JobFailed(payload)
    if tag == "interrupted":
        raise Interrupted(stop.halt or Halt.signal(signal.SIGTERM))
    return tag, payload


def _expect(
    conn: Connection, wanted: str, timeout_s: float, stop: Stop, progress: Progress | None = None
) -> None:
    """Wait for the worker's `wanted` message, relaying its progress (priming) meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not conn.poll(max(deadline - time.monotonic(), 0.0)):
            raise WorkerFailed(f"a bench worker did not get {wanted} in time")
        tag, payload = _recv(conn, stop)
        if tag == wanted:
            return
        if tag != "progress":
            raise WorkerFailed(f"a bench worker said {tag!r}, expected {wanted!r}")
        if progress is not None:
            progress(payload)


def worker_main(
    config: LoadConfig,
    worker: int,
    workers: int,
    conn: Connection,
    canary_url: str | None = None,
    parent_pid: int | None = None,
) -> None:
    """Process entry point: one uvloop, one Runner, results back through `conn`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the parent forwards it
    if parent_pid is not None:
        end_with_parent(parent_pid, signal.SIGKILL)  # no one to report to: nothing to keep
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_worker(config, worker, workers, conn, canary_url))
    except Interrupted:
        _send(conn, ("interrupted", None))
    except JobFailed as exc:
        _send(conn, ("failed", str(exc)))
    except BaseException:
        _send(conn, ("error", traceback.format_exc()))
    finally:
        conn.close()


def _send(conn: Connection, message: tuple[str, Any]) -> None:
    """To a parent that may be gone (it stopped waiting): nothing to say then."""
    with contextlib.suppress(OSError):
        conn.send(message)


async def _worker(
    config: LoadConfig, worker: int, workers: int, conn: Connection, canary_url: str | None
) -> None:
    stop = Stop()
    measuring = contextlib.ExitStack()
    with on_signals(stop, (signal.SIGTERM,)), measuring:
        async with Runner(
            config,
            worker,
            workers,
            progress=lambda snap: conn.send(("progress", snap)),
            canary_url=canary_url,
            stop=stop,
        ) as runner:
            await runner.prime()
            conn.send(("ready", None))
            # From here a stop never cancels: the parent answers "go" or "stop" in any case,
            # a stop ends the load (the runner hears it), and what it measured is sent.
            measuring.enter_context(stop.held())
            tag, start_ns = await asyncio.to_thread(conn.recv)
            if tag != "go":
                return
            result = await runner.run(start_ns)
        conn.send(("done", result))
