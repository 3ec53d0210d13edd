"""Batch runner throughput and overhead against the bare engine, same requests, same run, on
both paths of the hot path (compiled and pure Python) side by side.

    python benchmarks/batch.py [--requests 10000] [--tokens 200] [--concurrency 256]
                               [--repeats 3] [--out results.json]

The mock runs in its own process (ITL 0, `--tokens` per stream). Each repeat runs two fresh
client processes (`--child`), one per path, in alternating order: the environment's path
(compiled when the hot path is built: `python -m engine.build`) and the pure one
(`STREAM_ENGINE_PURE_PYTHON=1`). Each child warms up (a tenth of the requests, bare) and then
runs, in turn:
  bare:  the same bodies through `Engine.run` with a semaphore and asyncio.gather;
  batch: `run_batch` on a JSONL file of those bodies (both input passes, records appended
         to an output file, limits and progress bookkeeping included).
It prints requests/s and client-process CPU per request (min and median over repeats) for
`bare`, `batch`, `bare-pure` and `batch-pure`, each row with the path its process ran
(`engine.COMPILED` there), the CPU ratio batch / bare (the batch machinery's cost over the
engine) on each path, and the ratios pure / compiled. With no build, both paths are the same
code twice. `--out` also writes it all as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import engine_path, load_average, machine_facts, run_json_child, summary
from engine.batch import BatchConfig, Endpoint, run_batch
from engine.client import Engine
from engine.mock import MockConfig, MockProcess

MODES = ("bare", "batch")
PURE = "-pure"  # a row with this suffix ran with STREAM_ENGINE_PURE_PYTHON=1
ROWS = (*MODES, *(mode + PURE for mode in MODES))


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


# --- one client process: one path, one repeat ------------------------------------------------


def child_main(url: str, path: Path, workdir: Path, concurrency: int) -> dict[str, Any]:
    """Warm up, then bare and batch on the bodies of `path`, in this process."""
    items = [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    out = workdir / "out.jsonl"
    n, c = len(items), concurrency
    measure(lambda: bare(url, items[: n // 10], c))  # warm-up: imports, caches, the mock
    runs = {
        "bare": measure(lambda: bare(url, items, c)),
        "batch": measure(lambda: batch(url, path, out, c)),
    }
    loaded = engine_path()
    return {
        "compiled": loaded["compiled"],
        "pure_reason": loaded["pure_reason"],
        "compiled_modules": loaded["compiled_modules"],
        "runs": {
            mode: {"wall_s": wall, "cpu_s": cpu, "done": done}
            for mode, (wall, cpu, done) in runs.items()
        },
    }


# --- the parent side ---------------------------------------------------------------------------


def run_path(
    url: str, path: Path, workdir: Path, n: int, concurrency: int, *, pure: bool
) -> dict[str, Any]:
    """One repeat of one path in a fresh client process (`--child`)."""
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--url",
        url,
        "--input",
        str(path),
        "--workdir",
        str(workdir),
        "--concurrency",
        str(concurrency),
    ]
    res = run_json_child(argv, pure=pure, timeout_s=300 + n * 0.02)
    if "runs" not in res:
        raise SystemExit(f"the {'pure' if pure else 'default'} path's client failed: {res}")
    return res


def row(samples: list[dict[str, Any]], n: int, tokens: int) -> dict[str, Any]:
    """One row (a mode on a path) over the repeats."""
    paths = {s["compiled"] for s in samples}
    if len(paths) != 1:
        raise SystemExit("a path ran compiled in one repeat and pure in another")
    if any(s["done"] != n for s in samples):
        raise SystemExit("not every request succeeded")
    cpus = [s["cpu_s"] / n * 1e6 for s in samples]
    return {
        "compiled": paths.pop(),
        "pure_reason": samples[0]["pure_reason"],
        "req_per_s": summary([n / s["wall_s"] for s in samples], 0),
        "cpu_us_per_request": summary(cpus, 1),
        "cpu_us_per_token_event_at_min": round(min(cpus) / tokens, 3),
        "client_busy_median": round(
            statistics.median(s["cpu_s"] / s["wall_s"] for s in samples), 3
        ),
    }


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """batch / bare CPU per request on each path; pure / compiled of each mode."""

    def ratio(a: dict[str, float], b: dict[str, float], stat: str) -> float:
        return round(a[stat] / b[stat], 3)

    cpu = {name: r["cpu_us_per_request"] for name, r in rows.items()}
    rate = {name: r["req_per_s"] for name, r in rows.items()}
    return {
        "batch_over_bare_cpu": {
            "compiled": ratio(cpu["batch"], cpu["bare"], "min"),
            "pure": ratio(cpu["batch" + PURE], cpu["bare" + PURE], "min"),
        },
        "pure_over_compiled_cpu": {
            mode: {stat: ratio(cpu[mode + PURE], cpu[mode], stat) for stat in ("min", "median")}
            for mode in MODES
        },
        "pure_over_compiled_req_per_s": {
            mode: {stat: ratio(rate[mode + PURE], rate[mode], stat) for stat in ("max", "median")}
            for mode in MODES
        },
    }


def report(result: dict[str, Any]) -> str:
    n, tokens, rows = result["requests"], result["tokens"], result["rows"]
    title = (
        f"{n} requests x {tokens} tokens, {result['concurrency']} concurrent streams, mock in "
        f"its own process, each path in a fresh client process per repeat; best / median of "
        f"{result['repeats']}"
    )
    lines = [title]
    for name, r in rows.items():
        rate, cpu = r["req_per_s"], r["cpu_us_per_request"]
        lines.append(
            f"  {name:10} {'compiled' if r['compiled'] else 'pure':8} "
            f"{rate['max']:8,.0f} / {rate['median']:8,.0f} req/s   "
            f"{cpu['min']:6,.0f} / {cpu['median']:6,.0f} us CPU per request "
            f"({r['cpu_us_per_token_event_at_min']:.2f} us per token event), client process "
            f"{r['client_busy_median']:.0%} busy"
        )
    over = result["ratios"]["batch_over_bare_cpu"]
    lines.append(
        f"  batch / bare CPU per request: {over['compiled']:.3f} "
        f"({(over['compiled'] - 1) * 100:+.1f} %); pure: {over['pure']:.3f} "
        f"({(over['pure'] - 1) * 100:+.1f} %)"
    )
    cpu = result["ratios"]["pure_over_compiled_cpu"]
    rate = result["ratios"]["pure_over_compiled_req_per_s"]
    lines.append(
        "  pure / compiled CPU per request (min, median): "
        + ", ".join(f"{m} {cpu[m]['min']:.2f}, {cpu[m]['median']:.2f}" for m in MODES)
        + "; req/s (best, median): "
        + ", ".join(f"{m} {rate[m]['max']:.2f}, {rate[m]['median']:.2f}" for m in MODES)
    )
    if not rows["bare"]["compiled"]:
        why = rows["bare"]["pure_reason"] or "no build (`python -m engine.build`)"
        lines.append(f"  (the default path ran pure too, {why}: both paths are the same code)")
    return "\n".join(lines)


def bench(requests: int, tokens: int, concurrency: int, repeats: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in ROWS}
    modules: dict[str, list[str]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        MockProcess(MockConfig(output_tokens=tokens)) as mock,
    ):
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(b"".join(orjson.dumps(b) + b"\n" for b in bodies(requests)))
        for repeat in range(repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)  # drift hits both
            for pure in order:
                res = run_path(mock.base_url, path, Path(tmp), requests, concurrency, pure=pure)
                suffix = PURE if pure else ""
                modules["pure" if pure else "default"] = res["compiled_modules"]
                for mode in MODES:
                    samples[mode + suffix].append(
                        {**res["runs"][mode], **{k: res[k] for k in ("compiled", "pure_reason")}}
                    )
    rows = {name: row(s, requests, tokens) for name, s in samples.items()}
    return {
        "requests": requests,
        "tokens": tokens,
        "concurrency": concurrency,
        "repeats": repeats,
        "rows": rows,
        "ratios": ratios(rows),
        "compiled_modules": modules,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_main(args.url, args.input, args.workdir, args.concurrency)))
        return 0
    command = "python " + shlex.join(["benchmarks/batch.py", *sys.argv[1:]])
    facts = machine_facts()
    result = bench(args.requests, args.tokens, args.concurrency, args.repeats)
    print(report(result))
    if args.out is not None:
        facts["load_average_after"] = load_average()
        document = {"command": command, "machine": facts, "result": result}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
