"""Client self-check: was the load generator itself the bottleneck?

A client that is short of CPU reads bytes late, and its TTFT then measures itself rather
than the endpoint. Two signals, taken during the run in every worker: event-loop lag (a
ticker asks to wake every few ms and records how late it woke: any callback that hogs the
loop shows up here) and process CPU time over wall time. Open-loop runs spin briefly before
each send to beat timer granularity; that spin is idle work, so it is reported and taken
out of the busy figure. Requests that waited for a pool connection (`--max-connections`
below the load) are the client's delay too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from engine.loadtest.metrics import stats

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

TICK_S = 0.005
POOL_WAIT_MS = 1.0  # a measured request that waited longer than this for a connection


@dataclass(slots=True)
class ClientCheck:
    """One worker's self-check, plain data so it crosses processes."""

    worker: int
    loop: str = ""  # the event loop class, e.g. uvloop.Loop
    wall_s: float = 0.0
    cpu_s: float = 0.0
    spin_s: float = 0.0  # wall time spent yield-spinning before open-loop sends
    loop_lag_ms: list[float] = field(default_factory=list)

    @property
    def cpu_fraction(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def busy_fraction(self) -> float:
        return max(0.0, self.cpu_s - self.spin_s) / self.wall_s if self.wall_s > 0 else 0.0


class SelfCheckMonitor:
    """`async with SelfCheckMonitor(worker) as check:` measures the loop and CPU inside."""

    def __init__(self, worker: int, tick_s: float = TICK_S) -> None:
        self.check = ClientCheck(worker)
        self._tick_s = tick_s
        self._task: asyncio.Task[None] | None = None
        self._wall0 = 0.0
        self._cpu0 = 0.0

    async def _ticker(self) -> None:
        clock = time.perf_counter
        samples = self.check.loop_lag_ms
        tick = self._tick_s
        while True:
            due = clock() + tick
            await asyncio.sleep(tick)
            samples.append(max(0.0, (clock() - due) * 1000))

    async def __aenter__(self) -> Self:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()
        loop = asyncio.get_running_loop()
        self.check.loop = f"{type(loop).__module__}.{type(loop).__name__}"
        self._task = loop.create_task(self._ticker())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.check.wall_s = time.perf_counter() - self._wall0
        self.check.cpu_s = time.process_time() - self._cpu0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def verdict(checks: Sequence[ClientCheck], lag_threshold_ms: float, cpu_threshold: float,
            pool_wait_ms: Sequence[float] = ()) -> dict[str, Any]:
    """The report's client section: per worker figures, pooled loop lag, a plain verdict.
    `pool_wait_ms`: each measured request's wait for a pool connection."""
    lag = np.concatenate([np.asarray(c.loop_lag_ms) for c in checks]) if checks else np.empty(0)
    lag_stats = stats(lag)
    reasons = [f"worker {c.worker} used {c.busy_fraction:.0%} of a core"
               for c in checks if c.busy_fraction > cpu_threshold]
    p99 = lag_stats["p99"]
    if p99 is not None and p99 > lag_threshold_ms:
        reasons.append(f"event-loop lag p99 {p99:.1f} ms > {lag_threshold_ms:g} ms")
    waited = [ms for ms in pool_wait_ms if ms > POOL_WAIT_MS]
    if waited:
        reasons.append(f"{len(waited)} requests waited for a pool connection (up to "
                       f"{max(waited):.0f} ms): raise --max-connections")
    if reasons:
        text = ("CLIENT-BOUND: the load generator was the bottleneck (" + "; ".join(reasons)
                + "); latencies include client delay. Add --workers or lower the load.")
    else:
        text = "client OK: the load generator kept up (CPU and loop lag under thresholds)"
    return {
        "bottleneck": bool(reasons),
        "verdict": text,
        "loop_lag_ms": lag_stats,
        "max_cpu_percent": round(max((c.busy_fraction for c in checks), default=0) * 100, 1),
        "workers": [worker_facts(c) for c in checks],
    }


def worker_facts(check: ClientCheck) -> dict[str, Any]:
    return {
        "worker": check.worker, "loop": check.loop, "wall_s": round(check.wall_s, 3),
        "cpu_s": round(check.cpu_s, 3), "spin_s": round(check.spin_s, 3),
        "cpu_percent": round(check.cpu_fraction * 100, 1),
        "busy_cpu_percent": round(check.busy_fraction * 100, 1),
        "loop_lag_ms": stats(check.loop_lag_ms),
    }


def platform_facts(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where the numbers came from: interpreter, OS, CPUs and library versions."""
    import os  # noqa: PLC0415 - only for the report
    import platform  # noqa: PLC0415
    from importlib import metadata  # noqa: PLC0415

    versions: dict[str, str | None] = {}
    for name in ("stream-engine", "aiohttp", "uvloop", "orjson", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": platform.system(), "release": platform.release(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "processor": platform.processor() or None, "versions": versions,
        **(extra or {}),
    }
