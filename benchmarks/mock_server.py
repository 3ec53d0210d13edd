"""Throughput of the mock endpoint, with the server in its own process (MockProcess).

Figure 1 (`--figure 1`): events/s served to N concurrent Responses streams at ITL 0, and the
server process's CPU (from /proc/PID/stat), i.e. CPU µs per event on the server.
Figure 2 (`--figure 2`): hold 10,000 concurrent streams at 10 tokens/s each (ITL 100 ms) for
~10 s: do they all stay open, and how many tokens/s arrive against the 100,000 expected.

The load client is raw aiohttp in this process and only counts `\\n\\n` separators, so the
client costs as little as possible. Run one figure at a time on a 2-core machine:

    python benchmarks/mock_server.py --figure 1
    python benchmarks/mock_server.py --figure 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.mock import MockConfig, MockProcess

HEAD_TAIL_EVENTS = 8  # a Responses stream is 4 head events + deltas + 4 tail events
TICKS = os.sysconf("SC_CLK_TCK")
CONNECTS_IN_FLIGHT = 1000


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Load:
    """Shared counters of the load client."""

    events: int = 0
    streams_done: int = 0
    streams_failed: int = 0
    open_streams: int = 0
    errors: list[str] = field(default_factory=list)


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, load: Load,
                     connecting: asyncio.Semaphore | None = None) -> None:
    """One streaming request; counts separators as they arrive.

    `connecting` caps connects in flight: the kernel's accept queue (somaxconn, 4096 here)
    overflows when 10,000 SYNs arrive at once, and dropped SYNs come back seconds later.
    """
    try:
        if connecting is None:
            resp = await session.post(url, data=body)
        else:
            async with connecting:
                resp = await session.post(url, data=body)
        async with resp:
            load.open_streams += 1
            try:
                async for chunk in resp.content.iter_any():
                    load.events += chunk.count(b"\n\n")
            finally:
                load.open_streams -= 1
        load.streams_done += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        load.streams_failed += 1
        if len(load.errors) < 5:
            load.errors.append(repr(exc))


def session_for(streams: int) -> aiohttp.ClientSession:
    # Explicit limits: aiohttp's defaults (100 connections, 300 s total) would cap the load.
    connector = aiohttp.TCPConnector(limit=streams, limit_per_host=streams, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=30)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def figure_1(streams: int, tokens: int, seconds: float) -> dict[str, object]:
    """Closed loop: `streams` workers, each re-requesting as soon as its stream ended."""
    config = MockConfig(ttft_ms=0, itl_ms=0, output_tokens=tokens)
    body = orjson.dumps({"model": "m", "input": "bench", "stream": True})
    load = Load()
    with MockProcess(config) as proc:
        url = proc.base_url + "/responses"
        async with session_for(streams) as session:
            await asyncio.gather(*(one_stream(session, url, body, load) for _ in range(streams)))
            load.events = 0  # the first round opened the connections: that was warm-up
            stop_at = time.perf_counter() + seconds

            async def worker() -> None:
                while time.perf_counter() < stop_at:
                    await one_stream(session, url, body, load)

            cpu0, own0, t0 = process_cpu_s(proc.pid), time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(streams)))
            wall = time.perf_counter() - t0
            cpu, own = process_cpu_s(proc.pid) - cpu0, time.process_time() - own0
    return {
        "figure": 1, "streams": streams, "tokens_per_stream": tokens, "wall_s": round(wall, 2),
        "events": load.events, "events_per_s": round(load.events / wall),
        "server_cpu_s": round(cpu, 2), "server_cores": round(cpu / wall, 2),
        "server_cpu_us_per_event": round(cpu / load.events * 1e6, 2),
        "server_events_per_cpu_s": round(load.events / cpu), "client_cpu_s": round(own, 2),
        "failed": load.streams_failed, "errors": load.errors,
    }


class RawStream(asyncio.Protocol):
    """The cheapest possible HTTP/1.1 streaming client: one hand-written POST, count separators.

    Figure 2 measures the server, so the client must not be the bottleneck: aiohttp's reader
    costs several µs per chunk, and 100,000 tiny chunks/s would saturate this process first.
    """

    def __init__(self, request: bytes, load: Load, done: asyncio.Future[None]) -> None:
        self._request, self._load, self._done = request, load, done
        self._transport: asyncio.Transport | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self._load.open_streams += 1
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._load.events += data.count(b"\n\n")
        if data.endswith(b"0\r\n\r\n") and self._transport is not None:
            self._load.streams_done += 1
            self._transport.close()  # the last chunk of the chunked body

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self._load.open_streams -= 1
        if not self._done.done():
            self._done.set_result(None)


async def raw_stream(host: str, port: int, request: bytes, load: Load,
                     connecting: asyncio.Semaphore) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    try:
        async with connecting:  # caps SYNs in flight (see one_stream)
            await loop.create_connection(lambda: RawStream(request, load, done), host, port)
        await done
    except OSError as exc:
        load.streams_failed += 1
        if len(load.errors) < 5:
            load.errors.append(repr(exc))


async def figure_2(streams: int, rate: float, seconds: float) -> dict[str, object]:
    """Open loop: `streams` long streams at once, `rate` tokens/s each, sampled every second."""
    tokens = int(rate * seconds)
    config = MockConfig(ttft_ms=0, itl_ms=1000 / rate, output_tokens=tokens)
    body = orjson.dumps({"model": "m", "input": "bench", "stream": True})
    load = Load()
    samples: list[tuple[float, int, int]] = []
    with MockProcess(config) as proc:
        request = (b"POST /v1/responses HTTP/1.1\r\nHost: %b:%d\r\nContent-Type: "
                   b"application/json\r\nContent-Length: %d\r\n\r\n%b"
                   % (proc.host.encode(), proc.port, len(body), body))
        connecting = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
        cpu0, own0, t0 = process_cpu_s(proc.pid), time.process_time(), time.perf_counter()
        tasks = [asyncio.create_task(raw_stream(proc.host, proc.port, request, load, connecting))
                 for _ in range(streams)]
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0.5)
            samples.append((time.perf_counter() - t0, load.events, load.open_streams))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        cpu, own = process_cpu_s(proc.pid) - cpu0, time.process_time() - own0
    rates = [(e1 - e0) / (t1 - t0_) for (t0_, e0, _), (t1, e1, _) in itertools.pairwise(samples)]
    steady = [r for (_, _, open_), r in zip(samples[1:], rates, strict=False) if open_ == streams]
    return {
        "figure": 2, "streams": streams, "tokens_per_s_each": rate, "tokens_per_stream": tokens,
        "expected_tokens_per_s": round(streams * rate), "wall_s": round(wall, 2),
        "max_open_streams": max(s[2] for s in samples), "completed": load.streams_done,
        "failed": load.streams_failed, "errors": load.errors,
        "token_events": load.events - HEAD_TAIL_EVENTS * load.streams_done,
        "steady_events_per_s_median": round(statistics.median(steady)) if steady else None,
        "steady_seconds": len(steady) / 2, "server_cpu_s": round(cpu, 2),
        "server_cores": round(cpu / wall, 2), "client_cpu_s": round(own, 2),
        "per_half_second": [[round(t, 1), e, o] for t, e, o in samples],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figure", choices=["1", "2"], required=True)
    parser.add_argument("--streams", type=int, help="default 500 (figure 1), 10000 (figure 2)")
    parser.add_argument("--tokens", type=int, default=500, help="figure 1: tokens per stream")
    parser.add_argument("--rate", type=float, default=10.0, help="figure 2: tokens/s per stream")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the run")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.figure == "1":
        run = figure_1(args.streams or 500, args.tokens, args.seconds)
    else:
        streams = args.streams or 10_000
        if hard < streams + 100:
            print(f"ulimit -n is {hard}: too low for {streams} streams", file=sys.stderr)
            return 1
        run = figure_2(streams, args.rate, args.seconds)
    result = uvloop.run(run)
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                         "platform": platform.platform(), "nofile_soft_was": soft}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
