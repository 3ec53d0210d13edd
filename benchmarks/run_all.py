"""Every benchmark in one run: parser, pipeline CPU, TTFT against concurrency, TTFT accuracy.

Writes `results.json` (figures, ratios, budget verdicts and the machine's facts, including the
load average before and after) and three PNG plots into `--out` (default
`benchmarks/results/`). `--quick` runs tiny sizes in well under a minute: CI's smoke test. Its
figures are not results, so without `--out` it writes to a new temporary folder (printed):
the committed results change only on a full run.

    python benchmarks/run_all.py [--quick] [--out DIR] [--wait-load 1.2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

from benchmarks import parser as parser_bench
from benchmarks import pipeline, ttft_accuracy
from benchmarks.common import RESULTS, ROOT, load_average, machine_facts, raise_nofile
from engine.mock import MockConfig, MockProcess

PLOTS = ("cpu_per_event.png", "ttft_error.png", "parser.png")
COLORS = {
    "engine-stream": "#d62728",
    "engine-run": "#ff9896",
    "openai": "#1f77b4",
    "httpx-sse": "#2ca02c",
    "aiohttp-naive": "#9467bd",
    "floor": "#7f7f7f",
    "engine": "#d62728",
    "aiohttp-lines": "#9467bd",
    "engine-events": "#ff9896",
    # the same engine as pure Python (STREAM_ENGINE_PURE_PYTHON), beside the compiled one
    "engine-stream-pure": "#e377c2",
    "engine-pure": "#e377c2",
    "engine-events-pure": "#f7b6d2",
}


def wait_for_quiet(limit: float, max_wait_s: float) -> list[float]:
    """Poll the 1-minute load average every 30 s until it is below `limit` (or give up)."""
    deadline = time.monotonic() + max_wait_s
    while (load := load_average())[0] >= limit and time.monotonic() < deadline:
        print(f"load average {load}: waiting for < {limit}", file=sys.stderr)
        time.sleep(30)
    return load


def plot_cpu(cpu: dict[str, Any], facts: dict[str, Any], path: Path) -> None:
    """Bar chart: client CPU µs per event (median, with the min as a tick), log scale."""
    rows = [(c, r["us_per_event"]) for c, r in cpu["clients"].items() if r["us_per_event"]]
    rows.sort(key=lambda row: row[1]["median"])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    names = [c for c, _ in rows]
    medians = [s["median"] for _, s in rows]
    ax.barh(names, medians, color=[COLORS.get(c, "#333") for c in names])
    ax.plot([s["min"] for _, s in rows], names, "k|", markersize=14, label="min")
    for y, value in enumerate(medians):
        ax.text(value * 1.05, y, f"{value:.2f}", va="center", fontsize=9)
    ax.axvline(1.5, color="#d62728", linestyle="--", linewidth=1, label="budget 1.5 µs")
    ax.set_xscale("log")
    ax.set_xlim(0.1, max(medians) * 4)
    ax.set_xlabel("client CPU µs per event (median of runs; log scale)")
    ax.set_title(
        f"{cpu['tokens_per_stream']}-token Responses streams, {cpu['streams']} "
        f"concurrent, loopback\nload avg {facts['load_average_1_5_15'][0]}, "
        f"{facts['cores']} cores, {facts['python']}",
        fontsize=10,
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ttft(
    ttft: dict[str, Any], accuracy: dict[str, Any], facts: dict[str, Any], path: Path
) -> None:
    """Reported TTFT error (p50 solid, p99 dashed) against concurrency, log-log."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for client, points in ttft["clients"].items():
        xs, p50, p99 = [], [], []
        for level, stats in points.items():
            if "error_ms_p50" in stats:
                xs.append(int(level))
                p50.append(max(stats["error_ms_p50"], 0.1))
                p99.append(max(stats["error_ms_p99"], 0.1))
        color = COLORS.get(client, "#333")
        ax.plot(xs, p50, "o-", color=color, label=f"{client} p50")
        ax.plot(xs, p99, "--", color=color, alpha=0.6)
        why = ttft["saturated"].get(client)
        if why and xs:
            ax.plot(xs[-1], p50[-1], "x", color=color, markersize=12, mew=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ttft["levels"], [str(n) for n in ttft["levels"]])
    ax.minorticks_off()
    ax.set_xlabel("concurrent streams (all started at once, connections pre-opened)")
    ax.set_ylabel("reported TTFT - true TTFT (ms)")
    acc = accuracy["clients"].get(pipeline.ENGINE, {})
    ax.set_title(
        f"TTFT error vs concurrency (mock TTFT {ttft['ttft_ms']:.0f} ms, ITL "
        f"{ttft['itl_ms']:.0f} ms); dashed p99, x saturated\nload avg "
        f"{facts['load_average_1_5_15'][0]}; at {accuracy['streams']} streams x "
        f"{1000 / accuracy['itl_ms']:.0f} tok/s engine p50/p99: "
        f"{acc.get('error_ms_p50')}/{acc.get('error_ms_p99')} ms",
        fontsize=9,
    )
    ax.grid(visible=True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_parser(parser: dict[str, Any], path: Path) -> None:
    """Grouped bars: µs per event (min) of each parser on each stream shape."""
    cases = parser["cases"]
    who = parser["contestants"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(who)
    for i, name in enumerate(who):
        values = [c["results"][name]["us_per_event"]["min"] for c in cases]
        xs = [k + (i - (len(who) - 1) / 2) * width for k in range(len(cases))]
        ax.bar(
            xs,
            values,
            width,
            label=name,
            color=COLORS.get(name, "#333"),
            hatch="//" if name == parser_bench.EVENTS_LINE else None,
        )
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c["case"].replace("-", "\n", 2) for c in cases], fontsize=7)
    ax.axhline(0.6, color="#d62728", linestyle=":", linewidth=1)
    ax.set_ylabel("µs per event (min of repeats)")
    ax.set_title(
        f"SSE parsers on the same bytes ({parser['deltas_per_stream']} deltas per "
        "stream); dotted: 0.6 µs budget (LF, 64 KiB)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline(results: dict[str, Any]) -> list[str]:
    """The ratios, engine vs each peer, same run (printed and kept in the JSON)."""
    lines = []
    for client, ratio in results["pipeline_cpu"]["ratios"].items():
        if client != "budget":
            lines.append(
                f"pipeline CPU/event: {client} uses {ratio['min']}x (min) / "
                f"{ratio['median']}x (median) the engine's"
            )
    for case in results["parser"]["cases"]:
        for peer, ratio in case["ratios_vs_engine"].items():
            lines.append(
                f"parser {case['case']}: {peer} {ratio['min']}x (min) / {ratio['median']}x (median)"
            )
    for client, ratio in results["ttft_accuracy"]["error_ratios_vs_engine"].items():
        lines.append(
            f"TTFT error at {results['ttft_accuracy']['streams']} streams: {client} {ratio}"
        )
    return lines


def output_dir(out: Path | None, *, quick: bool) -> Path:
    """`--out`, else the committed results folder for a full run and a fresh temporary folder
    for `--quick` (its tiny sizes must never overwrite the committed figures)."""
    if out is None and quick:
        out = Path(tempfile.mkdtemp(prefix="stream-engine-bench-quick-"))
        print(f"--quick without --out: writing to {out}", file=sys.stderr)
    out = RESULTS if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    return out


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--quick", action="store_true", help="tiny sizes, < 60 s (CI smoke test)")
    args.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"directory for JSON and PNGs (default {RESULTS.relative_to(ROOT)}; "
        "with --quick a new temporary folder)",
    )
    args.add_argument(
        "--wait-load",
        type=float,
        default=None,
        metavar="LOAD",
        help="first wait (up to 20 min) for a 1-minute load average below LOAD",
    )
    opts = args.parse_args()
    raise_nofile()
    if opts.wait_load is not None:
        wait_for_quiet(opts.wait_load, 20 * 60)
    opts.out = output_dir(opts.out, quick=opts.quick)
    facts = machine_facts()
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "quick": opts.quick,
        "machine": facts,
        "command": "python benchmarks/run_all.py" + (" --quick" if opts.quick else ""),
    }
    if opts.quick:
        results["parser"] = parser_bench.run(deltas=50, repeats=2)
        results["pipeline_cpu"] = pipeline.cpu_figure(streams=5, tokens=50, seconds=0.2, repeats=1)
        results["ttft_concurrency"] = pipeline.ttft_figure(
            levels=(5, 20), ttft_ms=20, itl_ms=5, tokens=2
        )
        results["ttft_accuracy"] = ttft_accuracy.quick()
    else:
        results["parser"] = parser_bench.run()
        results["pipeline_cpu"] = pipeline.cpu_figure()
        results["ttft_concurrency"] = pipeline.ttft_figure()
        results["ttft_accuracy"] = ttft_accuracy.run()
    budget = results["pipeline_cpu"]["ratios"].get("budget", {})
    if not opts.quick and not all(v["holds"] for v in budget.values()):
        # The engine missed its budget: keep a profile of its client process for its owner.
        with MockProcess(MockConfig(output_tokens=500)) as mock:
            prof = pipeline.run_child(
                pipeline.ENGINE, mock.base_url, streams=50, seconds=2, profile=True
            )
        results["engine_profile"] = prof.get("profile", prof.get("stderr"))
    facts["load_average_after"] = load_average()
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    results["headline"] = headline(results)
    plot_cpu(results["pipeline_cpu"], facts, opts.out / PLOTS[0])
    plot_ttft(results["ttft_concurrency"], results["ttft_accuracy"], facts, opts.out / PLOTS[1])
    plot_parser(results["parser"], opts.out / PLOTS[2])
    (opts.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(results["headline"]))
    print(
        f"wrote {opts.out / 'results.json'} and {', '.join(PLOTS)} in {results['elapsed_s']} s"
        f" (load average {facts['load_average_1_5_15']} -> {facts['load_average_after']},"
        f" pid {os.getpid()})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
