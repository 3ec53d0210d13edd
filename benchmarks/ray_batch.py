"""What one Ray actor gives: batch throughput on Ray against the plain batch runner, same run.

    python benchmarks/ray_batch.py [--requests 5000] [--tokens 200] [--concurrency 256]

The mock runs in its own process (ITL 0, `--tokens` per stream); a local Ray instance is
started once (`num_cpus=4`, no dashboard) before anything is timed. Each repeat runs, in turn,
the same JSONL job:
  local:     `run_batch` in this process (the peer: no Ray at all);
  ray x1:    `run_batch_on_ray`, one actor (actor start, shard, part file and merge included);
  ray x2:    two actors, the concurrency split between them.
It prints requests/s (max and median over repeats) and each Ray mode's ratio to `local`, and
writes benchmarks/results/ray.json with the machine facts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import ray
import uvloop
from common import RESULTS, machine_facts

from engine.batch import BatchConfig, Endpoint, run_batch
from engine.distributed import run_batch_on_ray
from engine.mock import MockConfig, MockProcess


def job(path: Path, out: Path, base_url: str, concurrency: int) -> BatchConfig:
    for stale in out.parent.glob(f"{out.stem}*"):
        stale.unlink()
    return BatchConfig(
        input_path=path,
        output_path=out,
        endpoints=[Endpoint(base_url, "")],
        concurrency=concurrency,
        progress=False,
    )


def timed(fn: Any) -> tuple[float, int]:
    """(requests/s, requests that succeeded) of one whole job."""
    start = time.perf_counter()
    summary = fn()
    return summary.succeeded / (time.perf_counter() - start), summary.succeeded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    with (
        tempfile.TemporaryDirectory() as tmp,
        MockProcess(MockConfig(output_tokens=args.tokens)) as mock,
    ):
        path, out = Path(tmp) / "in.jsonl", Path(tmp) / "out" / "out.jsonl"
        out.parent.mkdir()
        path.write_bytes(
            b"".join(
                orjson.dumps(
                    {
                        "custom_id": f"r{i}",
                        "method": "POST",
                        "url": "/v1/responses",
                        "body": {"model": "m", "input": f"n {i}"},
                    }
                )
                + b"\n"
                for i in range(args.requests)
            )
        )
        url, c = mock.base_url, args.concurrency

        def local() -> Any:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(run_batch(job(path, out, url, c)))

        modes = {
            "local": local,
            "ray x1": lambda: run_batch_on_ray(job(path, out, url, c), address="auto", workers=1),
            "ray x2": lambda: run_batch_on_ray(job(path, out, url, c), address="auto", workers=2),
        }
        timed(modes["ray x1"])  # warm-up: Ray's worker processes, imports, the mock
        rates: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, fn in modes.items():
                rate, done = timed(fn)
                if done != args.requests:
                    raise SystemExit(f"{name}: {done} of {args.requests} succeeded")
                rates[name].append(rate)
    ray.shutdown()
    print(
        f"{args.requests} requests x {args.tokens} tokens, {c} concurrent streams, mock in "
        f"its own process; max / median of {args.repeats} (whole job, actor start included)"
    )
    base = statistics.median(rates["local"])
    doc: dict[str, Any] = {"config": vars(args), "machine": machine_facts(), "modes": {}}
    for name, values in rates.items():
        med = statistics.median(values)
        doc["modes"][name] = {
            "max_rps": round(max(values)),
            "median_rps": round(med),
            "ratio_to_local": round(med / base, 3),
        }
        print(f"  {name:7}: {max(values):7,.0f} / {med:7,.0f} req/s   {med / base:.2f}x local")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"wrote {RESULTS / 'ray.json'}")


if __name__ == "__main__":
    main()
