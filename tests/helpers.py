"""What the load tester's tests share: request records made by hand, and a quiet bench run's
flags (in this process or in a child, as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from engine.loadtest.metrics import RequestRecord

if TYPE_CHECKING:
    from collections.abc import Iterable

ROOT = Path(__file__).resolve().parent.parent


def make_record(i: int, *, intended_s: float | None = None, **fields: Any) -> RequestRecord:
    """Request `i` of worker 0, measured, sent on time at `i / 10` s (or `intended_s`), a
    success unless `ok=False`; `fields` set the rest (and override these)."""
    base: dict[str, Any] = {
        "index": i,
        "worker": 0,
        "warmup": False,
        "intended_s": i / 10 if intended_s is None else intended_s,
        "lag_ms": 0.0,
        "ok": True,
    }
    return RequestRecord(**(base | fields))


def completed_record(i: int, ttft_ms: float, gaps: Iterable[float], **fields: Any) -> RequestRecord:
    """A success whose first token came at `ttft_ms` and the next ones `gaps` ms apart: one
    timed token per gap plus the first, all counted as output, e2e at the last token."""
    itl = list(gaps)
    timed: dict[str, Any] = {
        "ttft_ms": ttft_ms,
        "e2e_ms": ttft_ms + sum(itl),
        "itl_ms": itl,
        "deltas": len(itl) + 1,
        "output_tokens": len(itl) + 1,
    }
    return make_record(i, **(timed | fields))


def failed_record(i: int, error: str, **fields: Any) -> RequestRecord:
    """A failure of kind `error` (e2e 5 ms unless given)."""
    return make_record(i, **({"ok": False, "error": error, "e2e_ms": 5.0} | fields))


def bench_flags(*flags: str, out: Path | None = None) -> list[str]:
    """`flags` plus what a test's run wants: no canary (a third busy process on a 2-core
    machine; it has its own tests), no live line, no run folder, the JSON at `out`."""
    return [*flags, "--no-canary", "-q", "--no-save", *(["-o", str(out)] if out else [])]


def bench_child(
    *flags: str, out: Path, timeout_s: float = 120, **popen: Any
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """`stream-engine bench FLAGS` in a child process, as a user runs it (the embedded mock
    unless a --base-url is given): the finished process and its JSON (None if not written)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):  # the embedded mock, no user's key
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "bench", *bench_flags(*flags, out=out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        check=False,
        **popen,
    )
    return proc, orjson.loads(out.read_bytes()) if out.exists() else None


PROBE = """
import time
worst, end, last = 0.0, time.perf_counter() + 1.5, time.perf_counter()
while (now := time.perf_counter()) < end:
    worst = max(worst, now - last)
    last = now
print(worst * 1000)
"""


def machine_stall_ms() -> float:
    """The longest gap a process that only spins sees in 1.5 s (the OS or hypervisor took
    its CPU away).

    On a quiet machine this is microseconds; on a VM whose host is busy it is milliseconds,
    and then a send schedule cannot be held to 1 ms by any client.
    """
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30, check=True
    )
    return float(proc.stdout)
