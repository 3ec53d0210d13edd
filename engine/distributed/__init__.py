"""Scale-out on Ray (the `ray` extra): batch jobs and load tests across machines.

    from engine.distributed import run_batch_on_ray, run_load_on_ray
    summary = run_batch_on_ray(BatchConfig("in.jsonl", "out.jsonl", rpm=10_000),
                               address="auto", workers=8)
    result = run_load_on_ray(LoadConfig(base_url=..., rate=200), address="auto", workers=4)

The only package that imports ray; the CLI imports it lazily for `--ray`. Modules: `cluster`
(joining Ray, actor options), `limiter` (the global RPM/TPM actor and its leases), `batch`
(shards, parts, merge), `loadtest` (bench actors started together, records merged).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Each name from the module that defines it, loaded on first use: a batch job on Ray must not
# load the load tester (and numpy), nor a load test the batch runner.
_HOME = {
    "Cluster": "cluster",
    "DistributedError": "cluster",
    "LeasedLimiter": "limiter",
    "RateLimitActor": "limiter",
    "limiter_actor": "batch",
    "merge_parts": "batch",
    "run_batch_on_ray": "batch",
    "run_load_on_ray": "loadtest",
}
__all__ = [
    "Cluster",
    "DistributedError",
    "LeasedLimiter",
    "RateLimitActor",
    "limiter_actor",
    "merge_parts",
    "run_batch_on_ray",
    "run_load_on_ray",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"engine.distributed.{_HOME[name]}"), name)
