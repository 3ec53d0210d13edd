"""The measured records cut into groups, each group summarized from its own records: by time
slice (`--slice`), by conversation turn (`--turns`) and by prompt-cache hit (a shared
prefix). Like every figure, each is a function of the records alone, so merged workers'
groups are exactly one process's.

A request belongs to the slice of its *intended start*, as AIPerf's time slices take the
request's start: a slice then holds the load that was offered during it (a rate series'
step, a trace's burst) and every figure of that load, whenever its answers came. Cut by
completion, a slow request's latency would land in a later slice, beside a load that did
not cause it. The slices partition the records: their counts sum to the run's. Throughputs
are the slice's completed requests (and their output tokens) per second of the slice; the
"Over time" timeline shows tokens by arrival.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from engine.loadtest.metrics import completed, failed, measured, meets_slo, stats, values

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np

    from engine.loadtest.metrics import RequestRecord

__all__ = ["SLICE_COLUMNS", "prefix_cache", "slice_of", "time_slices", "turns"]

TINY = 1e-9  # of a slice: float noise in a product, not a length
BRIEF = ("p50", "p90", "p99", "mean", "count")  # a group's latency: its few telling figures
# A slice's row, flat: the JSON list's keys and the slices CSV's columns, in this order.
SLICE_COLUMNS = (
    "slice",
    "start_s",
    "end_s",
    "sent",
    "completed",
    "failed",
    "cancelled",
    "request_throughput",
    "output_token_throughput",
    "ttft_ms_p50",
    "ttft_ms_p99",
    "itl_ms_p50",
    "itl_ms_p99",
    "e2e_ms_p50",
    "goodput_fraction",
)


def brief(data: np.ndarray) -> dict[str, float | int | None]:
    """p50, p90, p99, mean and count: the same numbers `stats` gives."""
    full = stats(data)
    return {key: full[key] for key in BRIEF}


def _mean(data: Sequence[float]) -> float | None:
    return round(math.fsum(data) / len(data), 4) if data else None


def slice_of(offset_s: float, slice_s: float) -> int:
    """The slice holding `offset_s`: [k * slice_s, (k + 1) * slice_s), an offset within a
    billionth of a slice of an edge on the edge (0.3 / 0.1 is 2.999..., yet 0.3 starts
    slice 3, as the rows' rounded edges say)."""
    return max(0, math.floor(offset_s / slice_s + TINY))


def time_slices(
    records: Sequence[RequestRecord],
    slice_s: float,
    slo: Mapping[str, float],
    end_s: float | None = None,
) -> list[dict[str, Any]]:
    """One row per `slice_s` of the measured window, empty ones included (the time axis has
    no holes), up to `end_s` (the sending window's planned end) or the last request sent.
    The last slice ends there, and its rates are per second of its own length."""
    done = measured(records)
    if not done:
        return []
    last = max(r.intended_s for r in done)
    end = max(end_s or 0.0, last)
    groups: dict[int, list[RequestRecord]] = {}
    for record in done:
        groups.setdefault(slice_of(record.intended_s, slice_s), []).append(record)
    # Up to the slice `end` falls in, none for an end on a slice's start.
    last_k = slice_of(end, slice_s)
    count = max(max(groups) + 1, last_k + (end - last_k * slice_s > slice_s * TINY))
    rows = []
    for k in range(count):
        group = groups.get(k, [])
        start = k * slice_s
        stop = min(start + slice_s, end)
        if stop - start < slice_s * TINY:  # the last request on a slice's start: whole slice
            stop = start + slice_s
        ok, bad = completed(group), failed(group)
        ttft, itl = stats(values(group, "ttft_ms")), stats(values(group, "itl_ms"))
        good = sum(meets_slo(r, slo) for r in group)
        rows.append(
            {
                "slice": k,
                "start_s": round(start, 6),
                "end_s": round(stop, 6),
                "sent": len(group),
                "completed": len(ok),
                "failed": len(bad),
                "cancelled": sum(r.cancelled for r in group),
                "request_throughput": len(ok) / (stop - start),
                "output_token_throughput": sum(r.output_tokens for r in ok) / (stop - start),
                "ttft_ms_p50": ttft["p50"],
                "ttft_ms_p99": ttft["p99"],
                "itl_ms_p50": itl["p50"],
                "itl_ms_p99": itl["p99"],
                "e2e_ms_p50": stats(values(group, "e2e_ms"))["p50"],
                "goodput_fraction": good / (len(ok) + len(bad)) if slo and (ok or bad) else None,
            }
        )
    return rows


def turns(records: Sequence[RequestRecord]) -> list[dict[str, Any]] | None:
    """Per turn of the multi-turn sessions (None: single requests): a later turn carries
    the earlier answers, so its input grows and, with a prompt cache, its TTFT need not."""
    done = [r for r in measured(records) if r.turn is not None]
    if not done:
        return None
    rows = []
    for turn in sorted({r.turn for r in done if r.turn is not None}):
        group = [r for r in done if r.turn == turn]
        ok = completed(group)
        rows.append(
            {
                "turn": turn,
                "sent": len(group),
                "completed": len(ok),
                "failed": len(failed(group)),
                "cancelled": sum(r.cancelled for r in group),
                "ttft_ms": brief(values(group, "ttft_ms")),
                "e2e_ms": brief(values(group, "e2e_ms")),
                "input_tokens_mean": _mean([r.input_tokens for r in ok if r.input_tokens]),
                "cached_tokens_mean": _mean(
                    [r.cached_tokens for r in ok if r.cached_tokens is not None]
                ),
            }
        )
    return rows


def prefix_cache(records: Sequence[RequestRecord]) -> dict[str, Any] | None:
    """With shared prefixes (None: none): how often the server said it served input from its
    prompt cache, what share of the input, and TTFT with a hit against without. Requests
    whose usage said nothing of cached tokens are in neither side."""
    done = [r for r in measured(records) if r.prefix_group is not None]
    if not done:
        return None
    ok = completed(done)
    reported = [r for r in ok if r.cached_tokens is not None]
    hits = [r for r in reported if r.cached_tokens]
    misses = [r for r in reported if not r.cached_tokens]
    shares = [(r.cached_tokens or 0) / r.input_tokens for r in reported if r.input_tokens]
    return {
        "groups": len({r.prefix_group for r in done}),
        "completed": len(ok),
        "reported": len(reported),
        "hits": len(hits),
        "hit_share": len(hits) / len(reported) if reported else None,
        "cached_share_mean": _mean(shares),
        "ttft_ms_hit": brief(values(hits, "ttft_ms")),
        "ttft_ms_miss": brief(values(misses, "ttft_ms")),
    }
