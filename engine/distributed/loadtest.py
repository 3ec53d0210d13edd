"""Load tests on Ray: N actors run the load tester's own `Runner`, each for its share.

The same split as `engine.loadtest.workers` (worker i of n: every n-th closed-loop user and
request, or every n-th arrival of the one open-loop schedule), so one actor per core on
each node adds up to exactly the configured load. Every actor primes its connections
first; then all start at one instant. Processes on one machine share CLOCK_MONOTONIC, but
machines do not, so the instant travels as wall-clock time (`time.time()`), converted by
each actor to its own `perf_counter_ns`: across machines, starts agree as well as NTP keeps
the clocks (typically well under a millisecond on a LAN). Records come back whole and
`combine` merges them exactly: percentiles over all requests, not averages of percentiles.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import ray

from engine.distributed.cluster import ACTOR_CPUS, Cluster, LoopThread, gather
from engine.loadtest.result import BenchResult, combine
from engine.loadtest.runner import Runner, WorkerResult

if TYPE_CHECKING:
    from engine.loadtest.config import LoadConfig

START_MARGIN_S: Final = 0.5  # from "all primed" to the common start: one RPC to every node


class BenchWorker:
    """A Ray actor owning one uvloop across calls, so primed connections stay open."""

    def __init__(self, config: LoadConfig, worker: int, workers: int) -> None:
        self._config = config
        self._worker = worker
        self._workers = workers
        self._loop = LoopThread()
        self._runner: Runner | None = None

    def prime(self) -> int:
        """Open this actor's connections; returns how many."""
        return self._loop.run(self._prime())

    async def _prime(self) -> int:
        runner = Runner(self._config, self._worker, self._workers)
        await runner.__aenter__()
        self._runner = runner
        await runner.prime()
        return runner.primed

    def run(self, start_wall_s: float) -> WorkerResult:
        """Run from the shared wall-clock instant; hands back every record."""
        start_ns = time.perf_counter_ns() + int((start_wall_s - time.time()) * 1e9)
        try:
            return self._loop.run(self._run(start_ns))
        finally:
            self._loop.close()

    async def _run(self, start_ns: int) -> WorkerResult:
        runner = self._runner
        assert runner is not None, "prime() first"  # noqa: S101 - call order
        try:
            return await runner.run(start_ns)
        finally:
            await runner.__aexit__(None, None, None)


def run_load_on_ray(
    config: LoadConfig, *, address: str | None, workers: int, actor_cpus: float = ACTOR_CPUS
) -> BenchResult:
    """One load test on `workers` Ray actors, merged into one exact result."""
    facts = config.facts | {"ray": {"actors": workers, "actor_cpus": actor_cpus}}
    config = config.with_(workers=workers, facts=facts)
    with Cluster(address, workers, actor_cpus) as cluster:
        actor_class: Any = ray.remote(BenchWorker).options(**cluster.actor_options())
        actors = [actor_class.remote(config, i, workers) for i in range(workers)]
        gather([actor.prime.remote() for actor in actors])
        start_wall_s = time.time() + START_MARGIN_S
        parts: list[WorkerResult] = gather([actor.run.remote(start_wall_s) for actor in actors])
    return combine(config, parts, config.label)
