"""How much of a load fits the open-files limit, said before the first request.

Every stream in flight holds one socket in the process that reads it (a worker) and one in
the embedded mock's process that serves it, besides what each process holds anyway (its
standard streams, event loop, pipes to its children, the canary's connection: 20-25
descriptors measured). A load beyond the limit does not fail politely: its connects fail
with `Too many open files` and the mock stops accepting, so the bench runs at the
concurrency that fits and says so in one line instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from engine.loadtest.config import AUTO_WORKERS
from engine.loadtest.workers import auto_workers

if TYPE_CHECKING:
    from engine.loadtest.config import LoadConfig

__all__ = ["FD_RESERVE", "fit_open_files"]

# Descriptors a bench process holds besides its streams' sockets: 20-25 measured (a worker, the
# embedded mock), doubled for what a run may add (a connection replaced while the old one
# closes, the scraper's, a resolver's).
FD_RESERVE = 48
UNLIMITED = 1 << 20  # a limit this large holds any load the bench can make


def _workers(config: LoadConfig, cores: int) -> int:
    """The worker processes the load will have (`--workers auto`: as it will split the
    closed loop; an open loop's count comes from its probe, at most one per core)."""
    if config.workers != AUTO_WORKERS:
        return config.workers
    if config.open_loop:
        return cores
    return auto_workers(config.concurrency, cores)


def fit_open_files(
    config: LoadConfig, limit: int, *, embedded_mock: bool, cores: int
) -> tuple[LoadConfig, str | None]:
    """`config` cut to what `limit` (descriptors a process may open) holds, and the line that
    says so (None when everything fits). A closed loop runs fewer users; an open loop's pool
    holds no more connections than fit, so a load that needs more waits for one (the pool
    wait the self-check reports) instead of failing to connect."""
    if limit >= UNLIMITED or limit < 0:  # RLIM_INFINITY is -1 on some platforms
        return config, None
    room = max(1, limit - FD_RESERVE)  # streams one process can hold
    workers = _workers(config, cores)
    # With the embedded mock, every stream of every worker is also one of its sockets.
    total_room = room if embedded_mock else room * workers
    changes: dict[str, Any] = {}
    said = None
    streams = config.concurrency
    if not config.open_loop and streams > total_room:
        changes["concurrency"] = total_room
        where = "the embedded mock's process" if embedded_mock else "each worker"
        needed = (streams if embedded_mock else math.ceil(streams / workers)) + FD_RESERVE
        said = (
            f"open files: {streams} concurrent streams need {needed} descriptors in {where}, "
            f"over the limit of {limit} (ulimit -n): running {total_room} users instead; to "
            f"run {streams}, raise the hard limit first (`ulimit -n {needed}` as root, or "
            "/etc/security/limits.conf)"
        )
    elif config.open_loop and config.pool_size > total_room // workers:
        pool = total_room // workers
        changes["max_connections"] = pool
        if config.max_connections is not None:  # asked for: say it (the default is only a cap)
            said = (
                f"open files: --max-connections {config.max_connections} needs more "
                f"descriptors than the limit of {limit} (ulimit -n) allows: each worker's "
                f"pool holds {pool} instead; raise the hard limit to hold more"
            )
    if not changes:
        return config, None
    facts = config.facts | {"open_files": {"limit": limit, "reserve": FD_RESERVE, **changes}}
    return config.with_(facts=facts, **changes), said
