"""Batch runner throughput and overhead against the bare engine, same requests, same run.

    python benchmarks/batch.py [--requests 10000] [--tokens 200] [--concurrency 256]

The mock runs in its own process (ITL 0, `--tokens` per stream). Each repeat runs, in turn:
  bare:  the same bodies through `Engine.run` with a semaphore and asyncio.gather;
  batch: `run_batch` on a JSONL file of those bodies (both input passes, records appended
         to an output file, limits and progress bookkeeping included).
It prints requests/s and client-process CPU per request (min and median over repeats) and
the CPU ratio batch / bare: the batch machinery's cost over the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.batch import BatchConfig, Endpoint, run_batch
from engine.client import Engine
from engine.mock import MockConfig, MockProcess


def bodies(n: int) -> list[dict[str, Any]]:
    return [{"model": "m", "input": f"request number {i}"} for i in range(n)]


async def bare(base_url: str, items: list[dict[str, Any]], concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    async with Engine(base_url, api_key="", max_connections=concurrency) as engine:

        async def one(body: dict[str, Any]) -> int:
            async with sem:
                result = await engine.run(body)
                return result.events

        done = await asyncio.gather(*(one(b) for b in items))
    return len(done)


async def batch(base_url: str, path: Path, out: Path, concurrency: int) -> int:
    for stale in (out, out.with_name(out.stem + ".errors.jsonl")):
        stale.unlink(missing_ok=True)
    summary = await run_batch(
        BatchConfig(
            input_path=path,
            output_path=out,
            endpoints=[Endpoint(base_url, "")],
            concurrency=concurrency,
        )
    )
    return summary.succeeded


def measure(fn: Any) -> tuple[float, float, int]:
    """(wall s, client CPU s, requests done) of one run on uvloop."""
    wall, cpu = time.perf_counter(), time.process_time()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        count = runner.run(fn())
    return time.perf_counter() - wall, time.process_time() - cpu, count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    items = bodies(args.requests)
    with (
        tempfile.TemporaryDirectory() as tmp,
        MockProcess(MockConfig(output_tokens=args.tokens)) as mock,
    ):
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(b"".join(orjson.dumps(b) + b"\n" for b in items))
        out = Path(tmp) / "out.jsonl"
        n, c, url = args.requests, args.concurrency, mock.base_url
        measure(lambda: bare(url, items[: n // 10], c))  # warm-up: connections, caches
        runs: dict[str, list[tuple[float, float, int]]] = {"bare": [], "batch": []}
        for _ in range(args.repeats):
            runs["bare"].append(measure(lambda: bare(url, items, c)))
            runs["batch"].append(measure(lambda: batch(url, path, out, c)))
    print(
        f"{n} requests x {args.tokens} tokens, {c} concurrent streams, mock in its own "
        f"process; min / median of {args.repeats}"
    )
    cpu_per_req: dict[str, float] = {}
    for name, samples in runs.items():
        if any(done != n for _, _, done in samples):
            raise SystemExit(f"{name}: not every request succeeded")
        rates = [n / wall for wall, _, _ in samples]
        cpus = [cpu / n * 1e6 for _, cpu, _ in samples]
        busy = [cpu / wall for wall, cpu, _ in samples]
        cpu_per_req[name] = min(cpus)
        print(
            f"  {name:5}: {max(rates):8,.0f} / {statistics.median(rates):8,.0f} req/s   "
            f"{min(cpus):6,.0f} / {statistics.median(cpus):6,.0f} us CPU per request "
            f"({min(cpus) / args.tokens:.2f} us per token event), client process "
            f"{statistics.median(busy):.0%} busy"
        )
    ratio = cpu_per_req["batch"] / cpu_per_req["bare"]
    print(f"  batch / bare CPU per request: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
