"""Load tests on Ray: N actors run the load tester's own `Runner`, each for its share.

The same split as `engine.loadtest.workers` (worker i of n: every n-th closed-loop user and
request, or every n-th arrival of the one open-loop schedule), so one actor per core on
each node adds up to exactly the configured load. Every actor primes its connections
first; then all start at one instant. Processes on one machine share CLOCK_MONOTONIC, but
machines do not, so the instant travels as wall-clock time (`time.time()`), converted by
each actor to its own `perf_counter_ns`: across machines, starts agree as well as NTP keeps
the clocks (typically well under a millisecond on a LAN). Records come back whole and
`combine` merges them exactly: percentiles over all requests, not averages of percentiles.

A stop (`engine.loadtest.interrupts.Stop`, said by the command's signal handlers) reaches
every actor as a `halt` call, each time it is said: the first ends the load as on one
machine (sending stops, the requests in flight get `--grace`, the result is kept, marked
interrupted), a second cuts them off. The driver waits with `ray.wait` in short slices so
that it tells the actors at once; the actors take the call beside their running `run`
(two calls at a time), and hand it to their loop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import ray

from engine.distributed.cluster import ACTOR_CPUS, Cluster, LoopThread, gather
from engine.loadtest.interrupts import Halt, Interrupted, Stop
from engine.loadtest.result import BenchResult, combine
from engine.loadtest.runner import Runner, WorkerResult

if TYPE_CHECKING:
    from engine.loadtest.config import LoadConfig

START_MARGIN_S: Final = 0.5  # from "all primed" to the common start: one RPC to every node
HEAR_EVERY_S: Final = 0.1  # how often the driver, waiting on its actors, looks for a stop


class BenchWorker:
    """A Ray actor owning one uvloop across calls, so primed connections stay open.

    No method is a coroutine: Ray makes an actor with one an async actor, whose blocking
    methods block its own loop, and `halt` would wait for `run` to end."""

    def __init__(self, config: LoadConfig, worker: int, workers: int) -> None:
        self._config = config
        self._worker = worker
        self._workers = workers
        self._loop = LoopThread()
        self._stop = Stop()
        self._runner: Runner | None = None

    def halt(self, halt: Halt) -> None:
        """The driver's stop, said again here: heard by this actor's runner on its loop."""
        self._loop.call_soon(self._stop, halt)

    def prime(self) -> int:
        """Open this actor's connections; returns how many."""
        runner = self._loop.run(
            _primed(Runner(self._config, self._worker, self._workers, stop=self._stop))
        )
        self._runner = runner
        return runner.primed

    def run(self, start_wall_s: float) -> WorkerResult:
        """Run from the shared wall-clock instant; hands back every record."""
        assert self._runner is not None, "prime() first"  # noqa: S101 - call order
        start_ns = time.perf_counter_ns() + int((start_wall_s - time.time()) * 1e9)
        try:
            return self._loop.run(_ran(self._runner, start_ns))
        finally:
            self._loop.close()


async def _primed(runner: Runner) -> Runner:
    await runner.__aenter__()
    await runner.prime()
    return runner


async def _ran(runner: Runner, start_ns: int) -> WorkerResult:
    try:
        return await runner.run(start_ns)
    finally:
        await runner.__aexit__(None, None, None)


def run_load_on_ray(
    config: LoadConfig,
    *,
    address: str | None,
    workers: int,
    actor_cpus: float = ACTOR_CPUS,
    stop: Stop | None = None,
) -> BenchResult:
    """One load test on `workers` Ray actors, merged into one exact result. `stop` ends it
    early (the command's signals): before the start, `Interrupted`; after, the result keeps
    what the actors measured and says why it ended."""
    stop = stop or Stop()
    facts = config.facts | {"ray": {"actors": workers, "actor_cpus": actor_cpus}}
    config = config.with_(workers=workers, facts=facts)
    with Cluster(address, workers, actor_cpus) as cluster:
        options = cluster.actor_options() | {"max_concurrency": 2}  # `halt` beside `run`
        actor_class: Any = ray.remote(BenchWorker).options(**options)
        actors = [actor_class.remote(config, i, workers) for i in range(workers)]
        try:
            _heeding(stop, actors, [actor.prime.remote() for actor in actors])
            if (halt := stop.halt) is not None:  # said while priming: nothing measured
                raise Interrupted(halt)
            start_wall_s = time.time() + START_MARGIN_S
            runs = [actor.run.remote(start_wall_s) for actor in actors]
            parts: list[WorkerResult] = _heeding(stop, actors, runs)
        finally:
            # At once, mid-call too: an actor whose handles are dropped ends only after its
            # pending calls (a prime, or a whole run beside an actor that died).
            for actor in actors:
                ray.kill(actor)
    result = combine(config, parts, config.label)
    result.halt = stop.halt or result.halt  # the command's reason, not the one it forwarded
    return result


def _heeding(stop: Stop, actors: list[Any], refs: list[Any]) -> list[Any]:
    """`gather(refs)`, telling every actor each stop said meanwhile (`BenchWorker.halt`)."""
    told, pending = 0, refs
    while True:
        while told < stop.times and stop.halt is not None:
            told += 1
            for actor in actors:
                actor.halt.remote(stop.halt)
        if not pending:
            return gather(refs)
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=HEAR_EVERY_S)
