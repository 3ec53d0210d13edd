"""Batch jobs on Ray: one actor per shard, one global rate limit, one merged result.

Layout on disk (a filesystem every node sees at the same path, e.g. NFS):

    out.jsonl, out.errors.jsonl                    the job's result, as `run_batch` writes it
    out.shard-2-of-3.jsonl, out.shard-2-of-3.errors.jsonl     shard 2's parts while it runs

Each shard runs the batch runner itself (`BatchRunner`, `Shard(i, n)`) on its own event loop,
connection pool and share of the concurrency, so it inherits the store's exactly-once
machinery: whole-line O_APPEND writes, flock, torn-tail repair, resume by custom_id. The
driver merges parts into the final files under the final files' locks, copying a line only
if its custom_id is not there yet, and deletes a part only after it is merged and synced.

Resume: a crash anywhere leaves complete lines in parts and final files. The next run first
merges any leftover parts (of any shard count), then every shard skips the ids the final
files hold, so nothing finished is sent again, and a job already complete starts no actor.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import orjson
import ray

from engine.batch.inputs import REPORTED_PROBLEMS, Shard, scan_input
from engine.batch.runner import (
    BatchConfig,
    BatchRunner,
    check_unchanged,
    errors_path_for,
    run_batch,
)
from engine.batch.store import ResultStore, read_state
from engine.batch.summary import BatchSummary
from engine.distributed.cluster import ACTOR_CPUS, LIMITER_CPUS, Cluster, LoopThread, gather
from engine.distributed.limiter import LEASE_SIZE, LEASE_TTL_S, LeasedLimiter, RateLimitActor
from engine.errors import ConfigError
from engine.limits import WINDOW_S
from engine.runtime import loop_factory

if TYPE_CHECKING:
    from pathlib import Path

    from engine.batch.store import ResumeState


def part_paths(output: Path, index: int, count: int) -> tuple[Path, Path]:
    """`out.jsonl` -> (`out.shard-I-of-N.jsonl`, `out.shard-I-of-N.errors.jsonl`)."""
    part = output.with_name(f"{output.stem}.shard-{index}-of-{count}{output.suffix or '.jsonl'}")
    return part, errors_path_for(part)


def leftover_parts(output: Path) -> list[tuple[Path, Path]]:
    """Parts of earlier runs of this job, whatever their shard count."""
    suffix = output.suffix or ".jsonl"
    pattern = re.compile(rf"{re.escape(output.stem)}\.shard-(\d+)-of-(\d+){re.escape(suffix)}")
    found = sorted(
        {
            (int(m[2]), int(m[1]))
            for p in output.parent.glob(f"{output.stem}.shard-*")
            if (m := pattern.fullmatch(p.name))
        }
    )
    return [part_paths(output, index, count) for count, index in found]


@dataclass(slots=True)
class MergeCounts:
    copied: int = 0
    skipped: int = 0  # already in the final files (a merge interrupted and run again)
    parts: int = 0


def _write_all(fd: int, line: bytes) -> None:
    view = memoryview(line)
    while view:
        view = view[os.write(fd, view) :]


def merge_parts(output: Path, errors: Path, parts: list[tuple[Path, Path]]) -> MergeCounts:
    """Copy the parts' records into the final files exactly once, then delete the parts.

    Both the final files and each part are held under the store's locks (a live shard
    writing a part makes this fail rather than lose its records), and torn tails are
    repaired first. Idempotent: an id already in output or errors is skipped.
    """
    counts = MergeCounts()
    with ResultStore(output, errors) as final:
        done = final.open().done
        fds = [os.open(path, os.O_WRONLY | os.O_APPEND) for path in (output, errors)]
        try:
            for part_out, part_err in parts:
                with ResultStore(part_out, part_err) as part:
                    part.open()
                    for source, fd in zip((part_out, part_err), fds, strict=True):
                        with source.open("rb") as f:
                            for line in f:
                                cid = str(orjson.loads(line)["custom_id"])
                                if cid in done:
                                    counts.skipped += 1
                                    continue
                                _write_all(fd, line)
                                done.add(cid)
                                counts.copied += 1
                    for fd in fds:  # the records must outlive the part we delete next
                        os.fsync(fd)
                    part_out.unlink()
                    part_err.unlink()
                counts.parts += 1
        finally:
            for fd in fds:
                os.close(fd)
    return counts


class _ShardRunner(BatchRunner):
    """The batch runner, also skipping ids already merged into the final files."""

    def __init__(self, config: BatchConfig, skip: set[str], limiter: LeasedLimiter | None) -> None:
        super().__init__(config, limiter=limiter)
        self.skip = skip

    def _count_done(self, state: ResumeState, shard_ids: set[str]) -> None:
        state.done |= self.skip  # the same set the dispatcher skips
        super()._count_done(state, shard_ids)


class ShardWorker:
    """A Ray actor running one shard on its own uvloop (sync method: ray.get stays simple)."""

    def run(
        self,
        config: BatchConfig,
        final: tuple[Path, Path],
        limiter: Any | None,
        lease_size: int,
        lease_ttl_s: float,
    ) -> BatchSummary:
        shard = config.shard
        done = read_state(*final).done if any(p.exists() for p in final) else set()
        skip = {cid for cid in done if cid in shard}
        loop = LoopThread()
        try:
            return loop.run(self._run(config, skip, limiter, lease_size, lease_ttl_s))
        finally:
            loop.close()

    @staticmethod
    async def _run(
        config: BatchConfig, skip: set[str], actor: Any | None, lease_size: int, lease_ttl_s: float
    ) -> BatchSummary:
        limiter = (
            None
            if actor is None
            else LeasedLimiter(actor, lease_size=lease_size, lease_ttl_s=lease_ttl_s)
        )
        try:
            return await _ShardRunner(config, skip, limiter).run()
        finally:
            if limiter is not None:
                await limiter.close()


def limiter_actor(
    rpm: float | None,
    tpm: float | None,
    *,
    window_s: float = WINDOW_S,
    lease_ttl_s: float = LEASE_TTL_S,
) -> Any:
    """A `RateLimitActor` handle (window_s < 60 only for tests: it shortens the window)."""
    return (
        ray.remote(RateLimitActor)
        .options(num_cpus=LIMITER_CPUS)
        .remote(rpm, tpm, window_s=window_s, lease_ttl_s=lease_ttl_s)
    )


def shard_config(config: BatchConfig, index: int, count: int) -> BatchConfig:
    """Shard `index` of `count`: its own part files and its share of the concurrency."""
    output, errors = part_paths(config.output_path, index, count)
    return replace(
        config,
        shard=Shard(index, count),
        output_path=output,
        errors_path=errors,
        concurrency=math.ceil(config.concurrency / count),
        progress=False,
    )


def run_batch_on_ray(
    config: BatchConfig,
    *,
    address: str | None,
    workers: int | None = None,
    actor_cpus: float = ACTOR_CPUS,
    lease_size: int = LEASE_SIZE,
    lease_ttl_s: float = LEASE_TTL_S,
    limiter: Any | None = None,
) -> BatchSummary:
    """Run (or resume) a batch job on `workers` Ray actors (default: one per cluster CPU).

    `config.rpm` / `config.tpm` hold for the whole job across actors; `config.concurrency`
    is split between them. `limiter` (from `limiter_actor`) replaces the job's own.
    """
    if config.shard.count != 1:
        raise ConfigError("--shard and --ray do not combine: Ray makes its own shards")
    if config.dry_run:
        with asyncio.Runner(loop_factory=loop_factory()) as loop:
            return loop.run(run_batch(config))
    started = time.monotonic()
    output, errors = config.output_path, config.errors_path
    assert errors is not None  # noqa: S101 - set by BatchConfig.__post_init__
    if config.retry_failed:
        raise ConfigError("--retry-failed and --ray do not combine yet: run it without --ray")
    leftovers = leftover_parts(output)
    if leftovers:
        merge_parts(output, errors, leftovers)
    base = read_state(output, errors) if output.exists() or errors.exists() else None
    done = None if base is None or config.allow_changed_input else base.digests
    scan = scan_input(config.input_path, Shard(), config.default_output_tokens, done)
    check_unchanged(scan, output, retry_failed=False)
    base_done = base.done if base is not None else set()
    if scan.ids <= base_done:  # complete: nothing to send, no cluster needed
        summary = BatchSummary(
            lines=scan.lines,
            requests=scan.requests,
            invalid=scan.bad,
            already_done=len(scan.ids),
            estimated_tokens=scan.estimated_tokens,
            resumed_failed=base.failed if base is not None else 0,
        )
    else:
        del scan
        with Cluster(address, workers, actor_cpus) as cluster:
            count = workers or cluster.cpus()
            shared = limiter
            if shared is None and (config.rpm is not None or config.tpm is not None):
                shared = limiter_actor(config.rpm, config.tpm, lease_ttl_s=lease_ttl_s)
            worker: Any = ray.remote(ShardWorker).options(**cluster.actor_options())
            actors = [worker.remote() for _ in range(count)]
            parts = gather(
                [
                    actor.run.remote(
                        shard_config(config, i, count),
                        (output, errors),
                        shared,
                        lease_size,
                        lease_ttl_s,
                    )
                    for i, actor in enumerate(actors, 1)
                ]
            )
        merge_parts(output, errors, [part_paths(output, i, count) for i in range(1, count + 1)])
        summary = add_summaries(parts)
        summary.resumed_failed += base.failed if base is not None else 0
    summary.started_s = started
    summary.wall_s = time.monotonic() - started
    return summary


def add_summaries(parts: list[BatchSummary]) -> BatchSummary:
    """Shard summaries -> the job's: counts add up (concurrency too: the shards' shares);
    `lines` is the whole file in each; the first bad lines of all shards, in line order."""
    total = BatchSummary(dry_run=any(p.dry_run for p in parts))
    for f in fields(BatchSummary):
        values = [getattr(p, f.name) for p in parts]
        if f.name == "lines":
            total.lines = max(values, default=0)
        elif f.name == "problems":
            merged = sorted((line for part in values for line in part), key=_line_number)
            total.problems = merged[:REPORTED_PROBLEMS]
        elif isinstance(getattr(total, f.name), Counter):
            setattr(total, f.name, sum(values, Counter()))
        elif isinstance(getattr(total, f.name), int) and not isinstance(values[0], bool):
            setattr(total, f.name, sum(values))
    return total


def _line_number(problem: str) -> int:
    """ "line 12: not valid JSON" -> 12 (problems are "line N: why")."""
    number = problem.removeprefix("line ").partition(":")[0]
    return int(number) if number.isdigit() else 0
