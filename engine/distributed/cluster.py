"""Joining a Ray cluster, and the actor options every distributed job shares.

Only `engine/distributed` imports ray: the core engine stays a plain asyncio library and the
`ray` extra stays optional. A job reuses a Ray connection the caller already made (tests,
notebooks) and shuts down only an instance it started itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import ray

from engine.errors import ConfigError, EngineError
from engine.runtime import loop_factory

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

T = TypeVar("T")

ACTOR_CPUS: Final = 0.5  # streams are I/O bound; whole-CPU actors starve each other on 2 cores
LIMITER_CPUS: Final = 0.0  # the limiter actor does a few dict updates per lease


class DistributedError(EngineError):
    """A Ray actor died or could not be placed; the job's files stay resumable."""


class Cluster:
    """`with Cluster(address, workers) as c:` connected to Ray for the duration of one job.

    address: "auto" (or a `ray://` / `host:port` address) joins a running cluster; None
    joins `RAY_ADDRESS` if set, else starts a private local instance with at least this
    machine's CPUs and room for `workers` actors of `actor_cpus` each (no dashboard).
    """

    def __init__(
        self, address: str | None, workers: int | None, actor_cpus: float = ACTOR_CPUS
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError("workers must be >= 1")
        if not actor_cpus > 0:
            raise ConfigError("actor_cpus must be > 0")
        self.address = address
        self.workers = workers
        self.actor_cpus = actor_cpus
        self._started = False

    def __enter__(self) -> Self:
        if ray.is_initialized():
            return self
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": "WARNING",
            "log_to_driver": False,
        }
        if address is None:
            need = math.ceil((self.workers or 1) * self.actor_cpus) + 1
            kwargs["num_cpus"] = max(os.cpu_count() or 1, need)
        # ray.init makes SIGTERM a sys.exit; a command's own handler (which keeps what the
        # job did, as on SIGINT) is put back. Default handling stays Ray's: it shuts down.
        sigterm = _own_sigterm_handler()
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
        finally:
            if sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
        self._started = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._started:
            ray.shutdown()

    def actor_options(self) -> dict[str, Any]:
        """Fractional CPUs, spread over nodes, never restarted (a restart would lose state)."""
        return {"num_cpus": self.actor_cpus, "scheduling_strategy": "SPREAD", "max_restarts": 0}

    def cpus(self) -> int:
        """CPUs in the cluster: the default actor count (one actor per core)."""
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        return max(1, int(resources.get("CPU", 1)))


def _own_sigterm_handler() -> Callable[[int, Any], Any] | None:
    """The caller's SIGTERM handler, if it has one of its own (a Python function)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGTERM)
    return handler if callable(handler) else None


def gather(refs: list[Any]) -> list[Any]:
    """`ray.get` every result, mapping an actor's death to DistributedError.

    An exception raised inside an actor arrives as its own type (Ray's RayTaskError
    subclasses the cause), so a ConfigError from a shard is still a ConfigError here.
    """
    try:
        return list(ray.get(refs))
    except ray.exceptions.RayActorError as exc:
        raise DistributedError(f"a Ray actor died: {exc}") from exc


class LoopThread:
    """An actor's own uvloop, in a thread of its own, kept across method calls.

    Ray runs an actor's sync methods in a thread that may already have a running event
    loop (its async machinery), so `asyncio.run` there fails; the engine's loop lives in
    its own thread instead, and the actor's methods block on its results.
    """

    def __init__(self) -> None:
        self._loop = loop_factory()()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="engine-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """`callback(*args)` on the loop's thread, not waited for; nothing once it closed."""
        with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing left to tell
            self._loop.call_soon_threadsafe(callback, *args)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.run(self._loop.shutdown_asyncgens())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
