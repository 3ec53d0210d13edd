"""Client self-check: was the load generator itself the bottleneck?

A client that is short of CPU reads bytes late, and its TTFT then measures itself rather
than the endpoint. Three signals, taken during the run in every worker: the read delay of a
canary stream (see `canary.py`: the server stamps each event before writing it, so arrival
minus stamp is the client's own delay on the very path that stamps TTFT), event-loop lag (a
ticker asks to wake every few ms and records how late it woke) and process CPU time over
wall time. Loop lag alone misses burst-level delay: the ticker wakes at the start of a loop
iteration, while a stream's bytes wait behind every stream woken in the same iteration; at
500 streams x 50 tokens/s one worker read first tokens 3-5 ms late (p99) with a loop lag p99
under 2 ms. Open-loop runs spin briefly before each send to beat timer granularity; that
spin is idle work, so it is reported and taken out of the busy figure. Requests that waited
for a pool connection (`--max-connections` below the load) are the client's delay too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from engine.client import Engine, RetryPolicy, Timeouts
from engine.errors import EngineError
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
    read_delay_ms: list[float] = field(default_factory=list)  # canary: arrival - server stamp
    canary_error: str | None = None  # the canary stream broke (its samples end there)

    @property
    def cpu_fraction(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def busy_fraction(self) -> float:
        return max(0.0, self.cpu_s - self.spin_s) / self.wall_s if self.wall_s > 0 else 0.0


class CanaryReader:
    """Reads one canary stream through an Engine of its own (never the load's pool) on the
    running loop, and records each event's read delay in ms."""

    def __init__(self, url: str, samples: list[float]) -> None:
        self.samples = samples
        self.error: str | None = None
        # api_key="": the user's OPENAI_API_KEY has no business going to the canary; nor do
        # the load's proxy and TLS options (trust_env=False: HTTP_PROXY too): the canary
        # serves plain HTTP on this machine's loopback, which no proxy elsewhere can reach.
        self.engine = Engine(
            url,
            api_key="",
            max_connections=1,
            retry=RetryPolicy(0),
            timeouts=Timeouts(first_byte_s=30.0, idle_s=None),
            trust_env=False,
        )

    async def run(self) -> None:
        samples = self.samples
        try:
            async with self.engine:
                async for ev in self.engine.stream(
                    {"model": "canary", "input": "canary"}, endpoint="responses"
                ):
                    if ev.text_delta:
                        stamp = ev.data.get("t")
                        if isinstance(stamp, int):
                            samples.append((ev.received_ns - stamp) / 1e6)
        except EngineError as exc:
            self.error = exc.kind


class SelfCheckMonitor:
    """`async with SelfCheckMonitor(worker) as check:` measures the loop, CPU and (given a
    canary server's URL) the client's read delay inside."""

    def __init__(self, worker: int, tick_s: float = TICK_S, canary_url: str | None = None) -> None:
        self.check = ClientCheck(worker)
        self._tick_s = tick_s
        self._task: asyncio.Task[None] | None = None
        self._canary = CanaryReader(canary_url, self.check.read_delay_ms) if canary_url else None
        self._canary_task: asyncio.Task[None] | None = None
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
        if self._canary is not None:
            self._canary_task = loop.create_task(self._canary.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.check.wall_s = time.perf_counter() - self._wall0
        self.check.cpu_s = time.process_time() - self._cpu0
        for task in (self._task, self._canary_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._canary is not None:
            self.check.canary_error = self._canary.error


def _pooled(checks: Sequence[ClientCheck], name: str) -> dict[str, float | int | None]:
    arrays = [np.asarray(getattr(c, name), dtype=np.float64) for c in checks]
    return stats(np.concatenate(arrays) if arrays else np.empty(0))


def verdict(
    checks: Sequence[ClientCheck],
    lag_threshold_ms: float,
    cpu_threshold: float,
    read_delay_threshold_ms: float = 2.0,
    pool_wait_ms: Sequence[float] = (),
    server_failed: str | None = None,
) -> dict[str, Any]:
    """The report's client section: per worker figures, pooled read delay and loop lag, and
    a plain verdict. `pool_wait_ms`: each measured request's wait for a pool connection;
    `server_failed`: why the failures are the server's (then the client is not judged)."""
    lag_stats = _pooled(checks, "loop_lag_ms")
    delay_stats = _pooled(checks, "read_delay_ms")
    reasons = [
        f"worker {c.worker} used {c.busy_fraction:.0%} of a core"
        for c in checks
        if c.busy_fraction > cpu_threshold
    ]
    delay_p99 = delay_stats["p99"]
    if delay_p99 is not None and delay_p99 > read_delay_threshold_ms:
        reasons.append(
            f"client read delay p99 {delay_p99:.1f} ms > "
            f"{read_delay_threshold_ms:g} ms (canary stream)"
        )
    p99 = lag_stats["p99"]
    if p99 is not None and p99 > lag_threshold_ms:
        reasons.append(f"event-loop lag p99 {p99:.1f} ms > {lag_threshold_ms:g} ms")
    waited = [ms for ms in pool_wait_ms if ms > POOL_WAIT_MS]
    if waited:
        reasons.append(
            f"{len(waited)} requests waited for a pool connection (up to "
            f"{max(waited):.0f} ms): raise --max-connections"
        )
    if server_failed is not None:
        reasons = []
        text = f"client not judged: the failures are the server's ({server_failed})"
    elif reasons:
        text = (
            "CLIENT-BOUND: the load generator was the bottleneck ("
            + "; ".join(reasons)
            + "); latencies include client delay. Add --workers or lower the load."
        )
    else:
        text = (
            "client OK: the load generator kept up (read delay, CPU and loop lag under thresholds)"
        )
    return {
        "bottleneck": bool(reasons),
        "verdict": text,
        "read_delay_ms": delay_stats,
        "loop_lag_ms": lag_stats,
        "max_cpu_percent": round(max((c.busy_fraction for c in checks), default=0) * 100, 1),
        "workers": [worker_facts(c) for c in checks],
    }


def worker_facts(check: ClientCheck) -> dict[str, Any]:
    return {
        "worker": check.worker,
        "loop": check.loop,
        "wall_s": round(check.wall_s, 3),
        "cpu_s": round(check.cpu_s, 3),
        "spin_s": round(check.spin_s, 3),
        "cpu_percent": round(check.cpu_fraction * 100, 1),
        "busy_cpu_percent": round(check.busy_fraction * 100, 1),
        "loop_lag_ms": stats(check.loop_lag_ms),
        "read_delay_ms": stats(check.read_delay_ms),
        "canary_error": check.canary_error,
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
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or None,
        "versions": versions,
        **(extra or {}),
    }
