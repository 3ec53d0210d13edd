"""Garbage while the cyclic collector is off: a run measures with automatic collection off
(see `Runner.run`), so what would pile up is bounded here instead."""

from __future__ import annotations

import asyncio
import gc
import traceback

__all__ = ["GC_CHECK_S", "GC_YOUNG_BUDGET", "bound_garbage", "drop_frames"]

# With the cyclic collector off during a run (see Runner.run), cyclic garbage still has to go:
# a failed request leaves exception -> traceback -> frame cycles (~40-100 objects; the frames'
# locals, read chunks among them, `drop_frames` frees at once). When the objects tracked
# since the last collection pass this budget, the run collects the young ones once: a pause of
# roughly 50-100 ms on a slow 2-core VM, every ~1,000 failed requests or tens of thousands of
# healthy ones, instead of unbounded memory.
GC_YOUNG_BUDGET = 100_000
GC_CHECK_S = 0.5


async def bound_garbage() -> None:
    """Collect the young generations once the run has added GC_YOUNG_BUDGET objects."""
    while True:
        await asyncio.sleep(GC_CHECK_S)
        if gc.get_count()[0] >= GC_YOUNG_BUDGET:
            gc.collect(1)


def drop_frames(exc: BaseException) -> None:
    """Free what a failure's tracebacks hold, once the record has its strings.

    With the cyclic collector off during a run, an exception's traceback keeps every frame it
    passed through alive until the next collection, and their locals with them: read chunks
    and a parser's pieces, ~350 KB a failure against a server that sends one endless line
    (measured on uvloop), i.e. tens of MB per second of failures. Clearing the frames frees
    those at once; the small cyclic rest waits for GC_YOUNG_BUDGET."""
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)  # skips the frames still running (ours)
        error.__traceback__ = None
        stack.extend(e for e in (error.__cause__, error.__context__) if e is not None)
