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

A late read is not always the client's fault. The verdict tells three causes apart: a client
at its limit (its own CPU over 90 % of a core, or delays while it was busy: CLIENT-BOUND, add
workers), a busy machine (delays while the client itself was nearly idle, or lightly used
while other processes took a good share of the cores: `MachineWatch` reads /proc for the
machine's and this run's own CPU; more workers would not help), and a failing server
(failures answered at once keep any client busy: it is not judged).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from engine.client import Engine, RetryPolicy, Timeouts
from engine.errors import EngineError
from engine.loadtest.metrics import stats

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

TICK_S = 0.005
POOL_WAIT_MS = 1.0  # a measured request that waited longer than this for a connection
# A delayed client using less than this share of a core is not at its limit: its delays are
# the machine's (a busy 2-core machine: the client at 7-14 % of a core, loop lag high) ...
QUIET_CLIENT_CPU = 0.25
# ... and one using less than this, while other processes (and a hypervisor's steal) use
# BUSY_MACHINE_SHARE of the machine's cores or more, is held off the CPU by them. From half a
# core on, a client's own bursts delay its reads (one loop at 500 streams x 50 tokens/s, 36 %
# busy, read 3-5 ms late at p99): that is CLIENT-BOUND whatever else runs.
SHARED_CLIENT_CPU = 0.5
BUSY_MACHINE_SHARE = 0.25
SHOWN_CORES = 0.005  # a share of cores that rounds to 0.00 is not worth a word
PROC = "/proc"


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


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """CPU seconds used so far on this machine: by every process (user and system time, not
    interrupts, where the run's own loopback traffic is handled), taken by the hypervisor
    (steal), and by this process tree (the bench, its workers, the embedded mock, the
    canary; reaped children included)."""

    wall_s: float
    busy_s: float
    steal_s: float
    ours_s: float


def _tree_cpu_s(root: int, tick_s: float) -> float:
    """CPU seconds of `root` and its descendants, each with the children it has reaped."""
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for entry in Path(PROC).iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_bytes()
        except OSError:  # it ended while we looked
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        used[pid] = sum(int(f) for f in fields[11:15]) * tick_s  # utime, stime, cutime, cstime
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(used.get(pid, 0.0) for pid in tree)


def cpu_times() -> CpuTimes | None:
    """This moment's `CpuTimes`; None where there is no /proc (not Linux)."""
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    try:
        with Path(PROC, "stat").open("rb") as file:
            cpu = [int(v) for v in file.readline().split()[1:9]]
        ours = _tree_cpu_s(os.getpid(), tick_s)
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = cpu
    return CpuTimes(time.monotonic(), (user + nice + system) * tick_s, steal * tick_s, ours)


class MachineWatch:
    """The machine's CPU over a run, split into this run's processes and everyone else's."""

    def __init__(self) -> None:
        self._start: CpuTimes | None = None
        self.share: dict[str, Any] | None = None

    def start(self) -> None:
        self._start = cpu_times()

    def stop(self) -> None:
        end = cpu_times()
        start = self._start
        if start is None or end is None or end.wall_s <= start.wall_s:
            return
        wall = end.wall_s - start.wall_s
        ours = end.ours_s - start.ours_s
        others = max(0.0, end.busy_s - start.busy_s - ours)
        self.share = {
            "cores": os.cpu_count() or 1,
            "seconds": round(wall, 3),
            "others_cores": round(others / wall, 3),  # every other process on the machine
            "steal_cores": round((end.steal_s - start.steal_s) / wall, 3),  # the hypervisor's
            "bench_cores": round(ours / wall, 3),  # bench, workers, embedded mock, canary
        }


def _pooled(checks: Sequence[ClientCheck], name: str) -> dict[str, float | int | None]:
    arrays = [np.asarray(getattr(c, name), dtype=np.float64) for c in checks]
    return stats(np.concatenate(arrays) if arrays else np.empty(0))


def _busy_machine(machine: Mapping[str, Any] | None) -> str | None:
    """How others used the machine, when that is a busy machine; None otherwise."""
    if machine is None:
        return None
    others = machine["others_cores"] + machine["steal_cores"]
    if others < BUSY_MACHINE_SHARE * machine["cores"]:
        return None
    return (
        f"other processes used {machine['others_cores']:.2f} of the machine's "
        f"{machine['cores']} cores{steal_text(machine)}"
    )


def steal_text(machine: Mapping[str, Any]) -> str:
    """ ", N taken by the hypervisor" when its steal shows at two decimals, else nothing."""
    stolen = machine["steal_cores"]
    return f", {stolen:.2f} taken by the hypervisor" if stolen >= SHOWN_CORES else ""


def verdict(
    checks: Sequence[ClientCheck],
    lag_threshold_ms: float,
    cpu_threshold: float,
    read_delay_threshold_ms: float = 2.0,
    pool_wait_ms: Sequence[float] = (),
    server_failed: str | None = None,
    machine: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report's client section: per worker figures, pooled read delay and loop lag, and
    a plain verdict, its `state` one of ok, client-bound, busy-machine, server-failing.
    `pool_wait_ms`: each measured request's wait for a pool connection; `server_failed`: why
    the failures are the server's (then the client is not judged); `machine`: a
    `MachineWatch` share (None: unknown, e.g. not Linux)."""
    lag_stats = _pooled(checks, "loop_lag_ms")
    delay_stats = _pooled(checks, "read_delay_ms")
    busiest = max((c.busy_fraction for c in checks), default=0.0)
    own = [
        f"worker {c.worker} used {c.busy_fraction:.0%} of a core"
        for c in checks
        if c.busy_fraction > cpu_threshold
    ]
    delays = []
    delay_p99 = delay_stats["p99"]
    if delay_p99 is not None and delay_p99 > read_delay_threshold_ms:
        delays.append(
            f"client read delay p99 {delay_p99:.1f} ms > "
            f"{read_delay_threshold_ms:g} ms (canary stream)"
        )
    p99 = lag_stats["p99"]
    if p99 is not None and p99 > lag_threshold_ms:
        delays.append(f"event-loop lag p99 {p99:.1f} ms > {lag_threshold_ms:g} ms")
    waited = [ms for ms in pool_wait_ms if ms > POOL_WAIT_MS]
    if waited:
        own.append(
            f"{len(waited)} requests waited for a pool connection (up to "
            f"{max(waited):.0f} ms): raise --max-connections"
        )
    others = _busy_machine(machine)
    if server_failed is not None:
        state = "server-failing"
        text = (
            f"SERVER FAILING: {server_failed}. The client is not judged: failures answered "
            "at once keep any client busy, and more workers would not help."
        )
    elif (
        delays
        and not own
        and (busiest < QUIET_CLIENT_CPU or (others is not None and busiest < SHARED_CLIENT_CPU))
    ):
        state = "busy-machine"
        held = others or "the machine held it off the CPU (another process, or the hypervisor)"
        text = (
            f"BUSY MACHINE: the client was delayed ({'; '.join(delays)}) while using only "
            f"{busiest:.0%} of a core: {held}. Latencies include this machine's "
            "scheduling delay; rerun on a quieter machine (more --workers would not help)."
        )
    elif own or delays:
        state = "client-bound"
        also = f"; {others} too" if others is not None else ""
        text = (
            "CLIENT-BOUND: the load generator was the bottleneck ("
            + "; ".join(own + delays)
            + f"{also}); latencies include client delay. Add --workers or lower the load."
        )
    else:
        state = "ok"
        text = (
            "client OK: the load generator kept up (read delay, CPU and loop lag under thresholds)"
        )
    return {
        "bottleneck": state == "client-bound",
        "state": state,
        "verdict": text,
        "read_delay_ms": delay_stats,
        "loop_lag_ms": lag_stats,
        "max_cpu_percent": round(busiest * 100, 1),
        "machine": None if machine is None else dict(machine),
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
