"""Throughput of the mock endpoint, with the server in its own (single-threaded) process.

Figure 1: events/s served to 500 concurrent Responses streams at ITL 0 (closed loop), and the
server's CPU per event. Figure 2: 10,000 concurrent streams at 10 tokens/s each (ITL 100 ms,
20 s each): are all 10,000 streaming at once (counted by the server, not just connected), and
how many tokens/s does the server send and the clients receive against the 100,000 expected?

To tell a slow server from a slow client, figure 2 measures both sides over the same window
(all streams open): the server's own send rate (`events_sent` from GET /mock/stats, counted
as the ticker writes), how late its shared timer runs (`ticker_lag`), its CPU split into user
and system time (/proc/PID/stat), and what the clients received. The clients are raw
`asyncio.Protocol` readers that only count `\\n\\n`, in `--clients` processes of their own
(SCHED_BATCH, so that a woken client does not preempt the server at every token).
The server is one single-threaded process, so it can never use more than one core; `--pin`
also pins it to CPU 0 and the clients to the others (on a machine shared with other work,
pinning leaves the server at the mercy of whatever else runs on CPU 0, so it is off by
default).

    python benchmarks/mock_server.py                       # both figures, about a minute
    python benchmarks/mock_server.py --figure 2 --streams 10000 --rate 10 --clients 2
    python benchmarks/mock_server.py --figure paths        # the paths check alone

Compiled or pure (docs/compiled.md): the mock calls no module of the hot path, so its figures
are the same on both paths and are not timed twice; every run checks that instead ("paths").
A child process imports what `python -m engine.mock` imports and records the engine modules
loaded and which are compiled; it then serves streams of every dialect on its own thread, once
on each path, while a profile hook counts the calls into engine code outside `engine.mock`:
pure, a compiled module's calls would show (compiled, they are C and invisible). Each figure
also records the engine extension modules mapped into the real mock process (/proc/PID/maps).
The compiled modules are loaded, because `engine/__init__.py` imports the public API, but
never called. The clients here are aiohttp and raw protocols: no engine code either.

Results are merged into `benchmarks/results/mock_server.json` (one entry per figure and one
for the paths check, each with its command and the machine's facts).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import functools
import http.client
import importlib.machinery
import itertools
import json
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    RESULTS,
    engine_path,
    load_average,
    machine_facts,
    raise_nofile,
    run_json_child,
)
from engine._compiled import HERE as ENGINE_DIR
from engine._compiled import HOT
from engine.mock import MockConfig, MockProcess, MockServerThread, MockStats

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.sharedctypes import SynchronizedArray
    from types import FrameType

HEAD_TAIL_EVENTS = 8  # a Responses stream is 4 head events + deltas + 4 tail events
TICKS = os.sysconf("SC_CLK_TCK")
CONNECTS_IN_FLIGHT = 1000  # total over all client processes (see RawStream)
SAMPLE_S = 0.5
PUBLISH_S = 0.1
HARD_LIMIT_S = 45.0  # figure 2 is stopped this long after its planned end, whatever happens
OUT = RESULTS / "mock_server.json"
# Per client process, in a shared array: what the parent samples.
EVENTS, OPEN, DONE, FAILED, CPU_US, SLOTS = range(6)
CHECK_STREAMS = 5  # the paths check: streams per dialect
CHECK_BODIES = (  # streamed
    ("/v1/responses", {"model": "m", "input": "check"}),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "check"}]}),
    ("/v1/completions", {"model": "m", "prompt": "check"}),
)


def process_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(pid, cpus)


def cpu_plan(pinned: bool) -> tuple[set[int] | None, set[int] | None]:
    """Server on CPU 0, clients on the others: "one core" is then literally one core."""
    available = sorted(os.sched_getaffinity(0))
    if not pinned or len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


# --- figure 1: events/s at ITL 0 -----------------------------------------------------------


@dataclass
class Load:
    """Counters of the figure-1 client."""

    events: int = 0
    streams_failed: int = 0
    errors: list[str] = field(default_factory=list)


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, load: Load) -> None:
    try:
        async with session.post(url, data=body) as resp:
            async for chunk in resp.content.iter_any():
                load.events += chunk.count(b"\n\n")
    except (aiohttp.ClientError, TimeoutError) as exc:
        load.streams_failed += 1
        if len(load.errors) < 5:
            load.errors.append(repr(exc))


async def figure_1(
    streams: int,
    tokens: int,
    seconds: float,
    server_cpus: set[int] | None,
    client_cpus: set[int] | None,
) -> dict[str, Any]:
    """Closed loop: `streams` workers, each re-requesting as soon as its stream ended."""
    config = MockConfig(ttft_ms=0, itl_ms=0, output_tokens=tokens)
    body = orjson.dumps({"model": "m", "input": "bench", "stream": True})
    load = Load()
    pin(0, client_cpus)
    with MockProcess(config) as proc:
        pin(proc.pid, server_cpus)
        extensions = mapped_extensions(proc.pid)
        url = proc.base_url + "/responses"
        # Explicit limits: aiohttp's defaults (100 connections, 300 s total) would cap the load.
        connector = aiohttp.TCPConnector(limit=streams, limit_per_host=streams)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(one_stream(session, url, body, load) for _ in range(streams)))
            load.events = 0  # the first round opened the connections: that was warm-up
            stop_at = time.perf_counter() + seconds

            async def worker() -> None:
                while time.perf_counter() < stop_at:
                    await one_stream(session, url, body, load)

            (user0, sys0), own0 = process_cpu_s(proc.pid), time.process_time()
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(streams)))
            wall = time.perf_counter() - t0
            (user1, sys1), own = process_cpu_s(proc.pid), time.process_time() - own0
    cpu = (user1 - user0) + (sys1 - sys0)
    return {
        "streams": streams,
        "tokens_per_stream": tokens,
        "wall_s": round(wall, 2),
        "events": load.events,
        "events_per_s": round(load.events / wall),
        "server_cpu_s": {"user": round(user1 - user0, 2), "system": round(sys1 - sys0, 2)},
        "server_cores": round(cpu / wall, 2),
        "server_cpu_us_per_event": round(cpu / load.events * 1e6, 3),
        "server_events_per_cpu_s": round(load.events / cpu),
        "client_cores": round(own / wall, 2),
        "failed": load.streams_failed,
        "errors": load.errors,
        "mock_process_extension_files": extensions,
        "mock_process_loaded_compiled": bool(extensions),
    }


# --- figure 2: 10,000 streams at 10 tokens/s --------------------------------------------------


class RawStream(asyncio.Protocol):
    """The cheapest possible HTTP/1.1 streaming client: one hand-written POST, count separators.

    aiohttp's reader costs several µs per chunk, and 100,000 one-token chunks per second would
    saturate a client process before the server.
    """

    def __init__(self, request: bytes, counts: list[int], done: asyncio.Future[None]) -> None:
        self._request, self._counts, self._done = request, counts, done
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self._counts[OPEN] += 1
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._counts[EVENTS] += data.count(b"\n\n")
        if data.endswith(b"0\r\n\r\n") and self._transport is not None:
            self._counts[DONE] += 1
            self._transport.close()  # the last chunk of the chunked body

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self._counts[OPEN] -= 1
        if not self._done.done():
            self._done.set_result(None)


async def client_streams(
    host: str,
    port: int,
    request: bytes,
    streams: int,
    connects: int,
    shared: SynchronizedArray[int],
    base: int,
) -> None:
    """`streams` raw streams; publishes its counters into `shared[base:base+SLOTS]`."""
    loop = asyncio.get_running_loop()
    counts = [0] * SLOTS
    connecting = asyncio.Semaphore(connects)  # somaxconn is 4096: 10,000 SYNs at once overflow

    async def one() -> None:
        done: asyncio.Future[None] = loop.create_future()
        try:
            async with connecting:
                await loop.create_connection(lambda: RawStream(request, counts, done), host, port)
            await done
        except OSError:
            counts[FAILED] += 1

    def publish() -> None:
        counts[CPU_US] = int(time.process_time() * 1e6)
        shared[base : base + SLOTS] = counts

    async def publisher() -> None:
        while True:
            publish()
            await asyncio.sleep(PUBLISH_S)

    ticker = asyncio.create_task(publisher())
    await asyncio.gather(*(one() for _ in range(streams)))
    ticker.cancel()
    publish()


def client_process(
    index: int,
    host: str,
    port: int,
    request: bytes,
    streams: int,
    connects: int,
    shared: SynchronizedArray[int],
    cpus: set[int] | None,
) -> None:
    pin(0, cpus)
    # SCHED_BATCH: a woken client does not preempt the server on a shared core. Without it
    # every token written can switch the server out for a client that reads one chunk.
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    raise_nofile()
    uvloop.run(client_streams(host, port, request, streams, connects, shared, index * SLOTS))


class StatsReader:
    """GET /mock/stats on one kept-alive connection, opened before the load: a new connection
    per sample would queue behind thousands of connects in the server's accept queue."""

    def __init__(self, host: str, port: int) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=10)

    def read(self) -> MockStats | None:
        """The server's counters, or None when it did not answer in time (sample skipped)."""
        try:
            self._conn.request("GET", "/mock/stats")
            return MockStats.from_snapshot(orjson.loads(self._conn.getresponse().read()))
        except (OSError, http.client.HTTPException):
            self._conn.close()  # reconnects on the next request
            return None

    def close(self) -> None:
        self._conn.close()


@dataclass
class Sample:
    t: float
    events: int
    open: int
    done: int
    failed: int
    client_cpu_s: float
    server_sent: int
    server_active: int
    server_user_s: float
    server_sys_s: float
    lag_total_s: float
    fires: int


def rate(a: Sample, b: Sample, name: str) -> float:
    return (getattr(b, name) - getattr(a, name)) / (b.t - a.t)


def figure_2(
    streams: int,
    per_s: float,
    seconds: float,
    clients: int,
    server_cpus: set[int] | None,
    client_cpus: set[int] | None,
) -> dict[str, Any]:
    """Open loop: `streams` streams of `seconds` at `per_s` tokens/s each, sampled twice a
    second on both sides."""
    tokens = int(per_s * seconds)
    config = MockConfig(ttft_ms=0, itl_ms=1000 / per_s, output_tokens=tokens)
    body = orjson.dumps({"model": "m", "input": "bench", "stream": True})
    ctx = mp.get_context("fork")  # before any loop runs in this process: safe to fork
    shared = ctx.Array(ctypes.c_longlong, clients * SLOTS, lock=False)
    samples: list[Sample] = []
    with MockProcess(config) as proc:
        pin(proc.pid, server_cpus)
        extensions = mapped_extensions(proc.pid)
        reader = StatsReader(proc.host, proc.port)
        reader.read()  # connects now, before the load
        request = (
            b"POST /v1/responses HTTP/1.1\r\nHost: %b:%d\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (proc.host.encode(), proc.port, len(body), body)
        )
        shares = [streams // clients + (i < streams % clients) for i in range(clients)]
        workers = [
            ctx.Process(
                target=client_process,
                args=(
                    i,
                    proc.host,
                    proc.port,
                    request,
                    share,
                    max(1, CONNECTS_IN_FLIGHT // clients),
                    shared,
                    client_cpus,
                ),
                daemon=True,
            )
            for i, share in enumerate(shares)
        ]
        t0 = time.perf_counter()
        for worker in workers:
            worker.start()
        deadline = t0 + seconds + HARD_LIMIT_S
        while True:
            time.sleep(SAMPLE_S)  # the sampling period of a harness, not a wait for a result
            values, t = list(shared), time.perf_counter() - t0
            total = [sum(values[i * SLOTS + k] for i in range(clients)) for k in range(SLOTS)]
            stats = reader.read()  # ~1 ms after the client counters, once all are connected
            user, system = process_cpu_s(proc.pid)
            if stats is not None:
                samples.append(
                    Sample(
                        t,
                        total[EVENTS],
                        total[OPEN],
                        total[DONE],
                        total[FAILED],
                        total[CPU_US] / 1e6,
                        stats.events_sent,
                        stats.streams_active,
                        user,
                        system,
                        stats.ticker_lag_s_total,
                        stats.ticker_fires,
                    )
                )
            if not any(w.is_alive() for w in workers) or time.perf_counter() > deadline:
                break
        timed_out = any(w.is_alive() for w in workers)
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join(5)
        final = reader.read() or proc.stats
        reader.close()
    peak = max(s.server_active for s in samples)
    result: dict[str, Any] = {
        "streams": streams,
        "tokens_per_s_each": per_s,
        "tokens_per_stream": tokens,
        "expected_tokens_per_s": round(streams * per_s),
        "client_processes": clients,
        "wall_s": round(samples[-1].t, 2),
        "timed_out": timed_out,
        "max_connected": max(s.open for s in samples),
        "max_generating": peak,
        "all_generating_at_once": peak == streams,
        "completed": samples[-1].done,
        "failed": samples[-1].failed,
        "token_events_received": samples[-1].events - HEAD_TAIL_EVENTS * samples[-1].done,
        "server_events_sent": final.events_sent,
        "server_backpressured": final.backpressured,
        "server_ticker_lag_ms_max": round(final.ticker_lag_s_max * 1000, 2),
        "server_ticker_early_wakeups": final.ticker_early,
        "window": window_stats(plateau(samples, streams), per_s),
        "mock_process_extension_files": extensions,
        "mock_process_loaded_compiled": bool(extensions),
        "samples_t_received_sent_connected_generating_servercpu": [
            [
                round(s.t, 1),
                s.events,
                s.server_sent,
                s.open,
                s.server_active,
                round(s.server_user_s + s.server_sys_s, 2),
            ]
            for s in samples
        ],
    }
    return result


def plateau(samples: list[Sample], streams: int) -> list[Sample]:
    """The longest run of samples with every client connected and the server generating
    (within 5 % of) its peak number of streams: all of them, when it keeps up."""
    peak = max(s.server_active for s in samples)
    best: list[Sample] = []
    run: list[Sample] = []
    for s in samples:
        run = [*run, s] if s.open == streams and s.server_active >= 0.95 * peak else []
        best = run if len(run) > len(best) else best
    return best


def window_stats(window: list[Sample], per_s: float) -> dict[str, Any] | None:
    """Both sides over the same window: what the schedule asks of the streams generating,
    what the server sent, what the clients received, and what it cost the server."""
    if len(window) < 2:
        return None
    a, b = window[0], window[-1]
    generating = statistics.fmean(s.server_active for s in window)
    fires = b.fires - a.fires
    server_cores = rate(a, b, "server_user_s") + rate(a, b, "server_sys_s")
    return {
        "from_s": round(a.t, 1),
        "to_s": round(b.t, 1),
        "generating_min": min(s.server_active for s in window),
        "generating_max": max(s.server_active for s in window),
        "schedule_tokens_per_s": round(generating * per_s),
        "server_tokens_per_s": round(rate(a, b, "server_sent")),
        "client_tokens_per_s": round(rate(a, b, "events")),
        "client_tokens_per_s_median_of_half_seconds": round(
            statistics.median(rate(x, y, "events") for x, y in itertools.pairwise(window))
        ),
        "server_cores_user": round(rate(a, b, "server_user_s"), 3),
        "server_cores_system": round(rate(a, b, "server_sys_s"), 3),
        "server_cpu_us_per_token": round(server_cores / rate(a, b, "server_sent") * 1e6, 2),
        "server_ticker_lag_ms_mean": round((b.lag_total_s - a.lag_total_s) / fires * 1000, 3)
        if fires
        else None,
        "server_ticker_fires_per_s": round(fires / (b.t - a.t)),
        "client_cores": round(rate(a, b, "client_cpu_s"), 3),
    }


# --- the paths check: does the mock run any of the hot path? ------------------------------------


def mapped_extensions(pid: int) -> list[str]:
    """The engine's extension files mapped into a live process: any, and it loaded compiled
    code. (All of it is in the build's shared library, `engine/_hot__mypyc*.so`; a module that
    another compiled module imports is initialised from there and maps no file of its own.)"""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(suffixes):
            path = Path(fields[5])
            if path.is_relative_to(ENGINE_DIR):
                found.add(str(path.relative_to(ENGINE_DIR.parent)))
    return sorted(found)


@functools.cache
def engine_module(filename: str) -> str | None:
    """The engine module a code object's file is, or None."""
    path = Path(filename).resolve()
    if not path.is_relative_to(ENGINE_DIR):
        return None
    parts = path.relative_to(ENGINE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def serve_counted(streams: int) -> tuple[collections.Counter[str], int]:
    """Serve `streams` streams of each dialect on a thread whose every Python call is seen by a
    profile hook; the calls into each engine module, and the streams served."""
    calls: collections.Counter[str] = collections.Counter()

    def hook(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:  # noqa: ARG001
        if event == "call":
            module = engine_module(frame.f_code.co_filename)
            if module is not None:
                calls[module] += 1
        return None

    threading.setprofile(hook)  # threads started from now on: the server's
    try:
        server = MockServerThread(MockConfig(ttft_ms=0, itl_ms=0, output_tokens=20)).start()
    finally:
        threading.setprofile(None)
    served = 0
    try:
        conn = http.client.HTTPConnection(server.server.host, server.port, timeout=10)
        for path, body in CHECK_BODIES:
            for _ in range(streams):
                conn.request("POST", path, orjson.dumps({**body, "stream": True}))
                resp = conn.getresponse()
                if resp.status == 200 and resp.read().count(b"\n\n") > 1:
                    served += 1
        conn.request("GET", "/mock/stats")
        conn.getresponse().read()
        conn.close()
    finally:
        server.stop()
    return calls, served


def check_child(streams: int) -> dict[str, Any]:
    """The child of the paths check: what `python -m engine.mock` loads, and what serving calls."""
    import engine.cli.mock  # noqa: F401, PLC0415 - what `python -m engine.mock` imports

    loaded = engine_path()
    calls, served = serve_counted(streams)
    mock = {m for m in calls if m == "engine.mock" or m.startswith("engine.mock.")}
    return {
        **loaded,
        "streams_served": served,
        "calls_into_mock": sum(calls[m] for m in mock),  # > 0: the hook saw the server
        "calls_outside_mock": {m: n for m, n in sorted(calls.items()) if m not in mock},
    }


def paths_check(streams: int = CHECK_STREAMS) -> dict[str, Any]:
    """The check on both paths (two child processes); raises when a child fails."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--check-child", str(streams)]
    runs = {}
    for name, pure in (("default", False), ("pure", True)):
        res = run_json_child(argv, pure=pure, timeout_s=120)
        if "streams_served" not in res:
            raise SystemExit(f"the paths check failed on the {name} path: {res}")
        if res["streams_served"] != streams * len(CHECK_BODIES):
            raise SystemExit(f"the paths check served {res['streams_served']} streams: {res}")
        if pure and not res["calls_into_mock"]:  # interpreted, the mock's own calls must show
            raise SystemExit(f"the paths check's profile hook saw nothing: {res}")
        runs[name] = res
    on_pure = runs["pure"]
    hot_calls = {m: n for m, n in on_pure["calls_outside_mock"].items() if m in HOT}
    return {
        "mock_compiled_modules": runs["default"]["compiled_modules"],
        "mock_engine_modules": runs["default"]["engine_modules"],
        "pure_path_ran_pure": not on_pure["compiled"],
        "streams_served_per_path": on_pure["streams_served"],
        "hot_calls_while_serving_pure": hot_calls,
        "same_on_both_paths": not on_pure["compiled"] and not hot_calls,
        "paths": runs,
    }


def report_paths(r: dict[str, Any]) -> str:
    compiled = r["mock_compiled_modules"]
    loaded = (
        f"the mock process loads {len(compiled)} compiled engine modules "
        f"({', '.join(compiled)}: imported by engine/__init__.py, not by the mock)"
        if compiled
        else "the mock process loads no compiled engine module"
    )
    if r["same_on_both_paths"]:
        verdict = (
            f"serving {r['streams_served_per_path']} streams on the pure path it called none "
            "of the hot path (profile hook): its figures are the same on both paths"
        )
    elif not r["pure_path_ran_pure"]:
        verdict = "the pure path's child ran compiled: the check proves nothing"
    else:
        verdict = (
            f"it CALLS the hot path while serving ({r['hot_calls_while_serving_pure']}): "
            "its figures depend on the path, time it on both"
        )
    return f"paths: {loaded}; {verdict}"


# --- reporting --------------------------------------------------------------------------------


def report_1(r: dict[str, Any]) -> str:
    return (
        f"figure 1: {r['events_per_s']:,} events/s to {r['streams']} streams "
        f"({r['tokens_per_stream']} tokens, ITL 0, {r['wall_s']} s); server "
        f"{r['server_cpu_us_per_event']} µs CPU/event = {r['server_events_per_cpu_s']:,} "
        f"events per CPU-second, {r['server_cores']} cores used; client "
        f"{r['client_cores']} cores; failed {r['failed']}; {loaded(r)}"
    )


def loaded(r: dict[str, Any]) -> str:
    """What the figure's own mock process mapped (the paths check says it calls none of it)."""
    return (
        f"mock process {'with' if r['mock_process_loaded_compiled'] else 'without'} compiled code"
    )


def report_2(r: dict[str, Any]) -> str:
    head = (
        f"figure 2: {r['max_connected']:,}/{r['streams']:,} streams connected, at most "
        f"{r['max_generating']:,} generating at once; {r['completed']:,} completed, "
        f"{r['failed']} failed, {r['token_events_received']:,} token events received "
        f"(expected {r['streams'] * r['tokens_per_stream']:,}); {loaded(r)}"
    )
    w = r["window"]
    if w is None:
        return head
    return (
        f"{head}\n  {w['from_s']}-{w['to_s']} s, {w['generating_min']:,}-"
        f"{w['generating_max']:,} streams generating: schedule "
        f"{w['schedule_tokens_per_s']:,} tokens/s (all {r['streams']:,}: "
        f"{r['expected_tokens_per_s']:,}), server sent {w['server_tokens_per_s']:,}, clients "
        f"received {w['client_tokens_per_s']:,} (median of half-seconds "
        f"{w['client_tokens_per_s_median_of_half_seconds']:,})\n  server CPU "
        f"{w['server_cores_user']} user + {w['server_cores_system']} system cores = "
        f"{w['server_cpu_us_per_token']} µs/token, ticker lag mean "
        f"{w['server_ticker_lag_ms_mean']} ms at {w['server_ticker_fires_per_s']:,} wake-ups/s "
        f"(max over the run "
        f"{r['server_ticker_lag_ms_max']} ms), deferred writes (client behind) "
        f"{r['server_backpressured']}; clients {w['client_cores']} cores "
        f"in {r['client_processes']} process(es)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--figure",
        choices=["1", "2", "all", "paths"],
        default="all",
        help="every choice runs the paths check; `paths` runs it alone",
    )
    parser.add_argument("--streams", type=int, help="default 500 (figure 1), 10000 (figure 2)")
    parser.add_argument("--tokens", type=int, default=500, help="figure 1: tokens per stream")
    parser.add_argument("--rate", type=float, default=10.0, help="figure 2: tokens/s per stream")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="figure 1: length of the run (default 10)"
    )
    parser.add_argument(
        "--stream-seconds",
        type=float,
        default=20.0,
        help="figure 2: length of each stream (default 20: admitting 10,000 "
        "requests takes this server several seconds of its core)",
    )
    parser.add_argument(
        "--clients", type=int, default=2, help="figure 2: client processes (default 2)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the server to CPU 0 and the clients to the other CPUs",
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"results file (default {OUT})")
    parser.add_argument("--check-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check_child is not None:
        print(json.dumps(check_child(args.check_child)))
        return 0
    hard = raise_nofile()
    server_cpus, client_cpus = cpu_plan(args.pin)
    command = "python " + shlex.join(["benchmarks/mock_server.py", *sys.argv[1:]])
    stored = json.loads(args.out.read_text()) if args.out.exists() else {}
    paths = paths_check()
    stored["paths"] = {"command": command, "machine": machine_facts(), "result": paths}
    print(report_paths(paths))
    if args.figure in ("1", "all"):
        facts = {
            **machine_facts(),
            "server_cpus": sorted(server_cpus or []),
            "client_cpus": sorted(client_cpus or []),
        }
        r1 = uvloop.run(
            figure_1(args.streams or 500, args.tokens, args.seconds, server_cpus, client_cpus)
        )
        stored["figure_1"] = {"command": command, "machine": facts, "result": r1}
        print(report_1(r1))
    if args.figure in ("2", "all"):
        streams = args.streams or 10_000
        if hard < streams // args.clients + 100:
            print(f"ulimit -n is {hard}: too low for {streams} streams", file=sys.stderr)
            return 1
        facts = {
            **machine_facts(),
            "server_cpus": sorted(server_cpus or []),
            "client_cpus": sorted(client_cpus or []),
        }
        r2 = figure_2(
            streams, args.rate, args.stream_seconds, args.clients, server_cpus, client_cpus
        )
        r2["load_average_after"] = load_average()
        stored["figure_2"] = {"command": command, "machine": facts, "result": r2}
        print(report_2(r2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"command: {command}\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
