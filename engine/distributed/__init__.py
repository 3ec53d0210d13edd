"""Scale-out on Ray (the `ray` extra): batch jobs and load tests across machines.

    from engine.distributed import run_batch_on_ray, run_load_on_ray
    summary = run_batch_on_ray(BatchConfig("in.jsonl", "out.jsonl", rpm=10_000),
                               address="auto", workers=8)
    result = run_load_on_ray(LoadConfig(base_url=..., rate=200), address="auto", workers=4)

The only package that imports ray; the CLI imports it lazily for `--ray`. Modules: `cluster`
(joining Ray, actor options), `limiter` (the global RPM/TPM actor and its leases), `batch`
(shards, parts, merge), `loadtest` (bench actors started together, records merged).
"""

from engine.distributed.batch import limiter_actor, merge_parts, run_batch_on_ray
from engine.distributed.cluster import Cluster, DistributedError
from engine.distributed.limiter import LeasedLimiter, RateLimitActor
from engine.distributed.loadtest import run_load_on_ray

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
