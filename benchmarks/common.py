"""Shared helpers of the benchmarks: the stream bytes, timing statistics, machine facts, and
the child processes that run a benchmark on either path of the hot path.

The stream bytes come from the mock endpoint's own renderers (`engine.mock`), so the parser
benchmark reads exactly what the pipeline benchmark's server sends.

Both paths in one run (docs/compiled.md): a benchmark whose subject is more than the hot
modules (a client, the batch runner) runs it in a fresh child process per path, the pure one
with `STREAM_ENGINE_PURE_PYTHON=1` (`run_json_child`), and the child says which path it ran
(`engine_path`). The parser, whose subject is the hot modules alone, loads their .py sources
beside the compiled ones in one process instead (`engine._compiled.load_sources`).
"""

from __future__ import annotations

import datetime as dt
import importlib.machinery
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import engine  # noqa: E402 - needs ROOT on sys.path
from engine._compiled import PURE_ENV, pure_reason  # noqa: E402
from engine.mock.chat import ChatStream  # noqa: E402
from engine.mock.responses import ResponsesStream  # noqa: E402
from engine.mock.text import Generation, generate_tokens  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("aiohttp", "orjson", "uvloop", "httpx", "httpx-sse", "openai", "matplotlib", "numpy")
CHUNK_BYTES = 64 * 1024


def stream_events(dialect: str, deltas: int, seed: int = 7) -> tuple[list[bytes], str]:
    """One whole stream (`responses` or `chat`) of `deltas` text deltas, as the mock renders
    it, and the text those deltas carry."""
    gen = Generation(
        model="mock-model",
        tokens=generate_tokens(seed, deltas),
        input_tokens=8,
        created=1_700_000_000,
        include_usage=True,
    )
    stream = ResponsesStream(gen) if dialect == "responses" else ChatStream(gen)
    return [*stream.head(), *stream.deltas(0, deltas), *stream.tail()], gen.text


def chunked(events: list[bytes], *, crlf: bool, coalesced: bool) -> list[bytes]:
    """The stream as a client reads it: one event per chunk, or 64 KiB chunks."""
    if crlf:
        events = [e.replace(b"\n", b"\r\n") for e in events]
    if not coalesced:
        return events
    body = b"".join(events)
    return [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    """Min and median (the figures we report), plus max for the spread."""
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def raise_nofile() -> int:
    """Lift the soft open-files limit to the hard one (thousands of sockets); return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores, Python, versions, load, date."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "packages": versions,
        "load_average_1_5_15": load_average(),
    }


# --- both paths of the hot path ---------------------------------------------------------------


def engine_path() -> dict[str, Any]:
    """Which path this process runs: `engine.COMPILED`, why the build is ignored (None: it is
    not, or there is none), every engine module loaded, and those loaded from an extension
    module (compiled)."""
    extension = importlib.machinery.ExtensionFileLoader
    loaded = sorted(m for m in sys.modules if m == "engine" or m.startswith("engine."))
    return {
        "compiled": engine.COMPILED,
        "pure_reason": pure_reason(),
        "engine_modules": loaded,
        "compiled_modules": [
            m for m in loaded if isinstance(getattr(sys.modules[m], "__loader__", None), extension)
        ],
    }


def run_json_child(argv: list[str], *, pure: bool, timeout_s: float) -> dict[str, Any]:
    """Run `argv` (a benchmark's own child mode) in a fresh interpreter, with
    `STREAM_ENGINE_PURE_PYTHON=1` when `pure` (otherwise the environment's path: compiled when
    built); its result is the JSON object on the last line of its stdout, or
    `{"timed_out": True, ...}` / `{"crashed": returncode, "stderr": ...}`."""
    env = os.environ.copy()
    if pure:
        env[PURE_ENV] = "1"
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False, env=env)
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "timeout_s": timeout_s}
    if proc.returncode != 0:
        return {"crashed": proc.returncode, "stderr": proc.stderr.decode(errors="replace")[-2000:]}
    return dict(json.loads(proc.stdout.decode().strip().splitlines()[-1]))
