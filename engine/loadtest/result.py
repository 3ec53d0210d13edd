"""`BenchResult`: the merged outcome of a run, and its JSON document (schema in docs/loadtest.md).

`combine` is a pure function of the workers' results: records are concatenated and every
figure is recomputed from the union, so N workers report exactly what one process that saw
all requests would have reported.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.loadtest.interrupts import JOB_FAILURE
from engine.loadtest.metrics import (
    RequestRecord,
    failed,
    measured,
    merge,
    stats,
    summarize,
    values,
)
from engine.loadtest.selfcheck import ClientCheck, platform_facts, verdict
from engine.loadtest.slices import prefix_cache, time_slices, turns

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from engine.loadtest.config import LoadConfig
    from engine.loadtest.interrupts import Halt
    from engine.loadtest.runner import WorkerResult

SCHEMA_VERSION = 1
# Per-request values kept in the document so that `stream-engine compare` can estimate each
# percentile's noise. `tpot_ms` is also the per-request mean ITL (TPOT is defined as the mean
# gap), so it is stored once; individual gaps are not kept (they would not be compact).
SAMPLE_METRICS = ("ttft_ms", "ttft_text_ms", "tpot_ms", "e2e_ms")
SAMPLE_DIGITS = 3  # 0.001 ms: finer than any latency is measured, and short in JSON
# At least this share of the measured requests failed: the server is failing, and the client
# is not judged (a failure answered at once keeps any client busy).
SERVER_FAILING_SHARE = 0.5
# The sweep's saturation point (docs/loadtest.md): the last step, in order of achieved
# throughput, whose throughput still grew by more than this over the step before ...
SATURATION_GROWTH = 0.05
# ... while its TTFT p99 stayed within this factor of the lightest step's.
SATURATION_TTFT_FACTOR = 2.0
SATURATION_RULE = (
    f"the last step, in order of achieved request throughput, whose throughput "
    f"grew by more than {SATURATION_GROWTH:.0%} over the step before while its "
    f"TTFT p99 stayed within {SATURATION_TTFT_FACTOR:g}x of the lightest step's"
)


def samples(records: Sequence[RequestRecord]) -> dict[str, list[float]]:
    """Completed measured requests' values per metric, in intended-start order."""
    done = measured(records)
    return {
        metric: np.round(values(done, metric), SAMPLE_DIGITS).tolist() for metric in SAMPLE_METRICS
    }


# How a prompt's asked length is counted without --tokenizer (engine.loadtest.workload).
WORD_COUNT = "words, plus 3 per message and 3 for the reply, as the mock counts"


@dataclass(slots=True)
class BenchResult:
    """Every request record of a run plus the client's own health, ready to report."""

    config: LoadConfig
    records: list[RequestRecord]
    checks: list[ClientCheck]
    connect_ms: list[float] = field(default_factory=list)
    connections_opened_measured: int = 0
    primed: int = 0
    prime_errors: dict[str, int] = field(default_factory=dict)
    label: str = ""
    origin_ns: int = 0  # perf_counter_ns of the window start: correlates records with server logs
    server_metrics: dict[str, Any] | None = None  # --server-metrics: the scraper's section
    halt: Halt | None = None  # why the load ended early (a signal, a job failure), if it did
    machine: dict[str, Any] | None = None  # the machine's CPU during the run (MachineWatch)

    @property
    def measured(self) -> list[RequestRecord]:
        return measured(self.records)

    def server_failed(self) -> str | None:
        """Why the client's figures are not judged, if they are not: a load of failures
        answered at once keeps any client busy, and "add --workers" would be the wrong advice
        for a server that refuses the job or fails every request."""
        if self.halt is not None and self.halt.by == JOB_FAILURE:
            return self.halt.message
        done = [r for r in self.measured if not r.cancelled]  # the client's own cut: no answer
        kinds_seen = Counter(r.error or "unknown" for r in failed(done))
        total = sum(kinds_seen.values())
        if not done or total < SERVER_FAILING_SHARE * len(done):
            return None
        kinds = ", ".join(f"{kind} {n}" for kind, n in kinds_seen.most_common())
        if total == len(done):
            return f"every one of the {len(done)} measured requests failed ({kinds})"
        return f"{total} of the {len(done)} measured requests failed ({kinds})"

    def slices(self) -> list[dict[str, Any]] | None:
        """The time slices' rows (`config.slice_s`; None: not asked for), up to the planned
        end of sending: a run cut short by `requests` or a signal ends at its last send."""
        config = self.config
        if config.slice_s is None:
            return None
        planned = config.duration_s if config.requests is None and self.halt is None else None
        return time_slices(self.records, config.slice_s, config.slo, planned)

    def summary(self) -> dict[str, Any]:
        """The result document: figures first, then the client check, config and platform."""
        config = self.config
        warm = [r for r in self.records if r.warmup]
        groups = {
            key: value
            for key, value in (
                ("turns", turns(self.records)),
                ("prefix_cache", prefix_cache(self.records)),
            )
            if value is not None
        }
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tool": "stream-engine bench",
            "label": self.label or config.label,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "mode": "open" if config.open_loop else "closed",
            "interrupted": None if self.halt is None else self.halt.document(),
            **summarize(
                self.records, config.slo, config.asked_tokens, cancelling=config.cancel_rate > 0
            ),
            **groups,
            "connect_ms": stats(self.connect_ms),
            "warmup": {
                "seconds": config.warmup_s,
                "requests": len(warm),
                # metrics.failed's rule, as the window's: a cancelled request is no failure.
                "failed": len(warm_failed := failed(warm)),
                "errors": dict(Counter(r.error or "unknown" for r in warm_failed).most_common()),
                "connections_primed": self.primed,
                "primer_errors": self.prime_errors,
                "connections_opened_during_measurement": self.connections_opened_measured,
            },
            "clock": {
                "origin_perf_counter_ns": self.origin_ns,
                "note": "record offsets are seconds from this time.perf_counter_ns()",
            },
            "client": verdict(
                self.checks,
                config.lag_threshold_ms,
                config.cpu_threshold,
                config.read_delay_threshold_ms,
                [r.pool_wait_ms for r in self.measured],
                self.server_failed(),
                self.machine,
            ),
            "config": config.public(),
            "platform": platform_facts(),
        }
        if self.server_metrics is not None:
            doc["server_metrics"] = self.server_metrics
        if (asked := doc.get("lengths")) is not None and asked["input"] is not None:
            # How the asked prompt lengths were counted: a real server's tokens differ.
            asked["counted_in"] = config.tokenizer or WORD_COUNT
        if (rows := self.slices()) is not None:
            doc["slices"] = rows  # long for a long run: below the figures, above the samples
        doc["samples"] = samples(self.records)  # last: the figures stay on top when read
        return doc


def combine(config: LoadConfig, parts: Sequence[WorkerResult], label: str = "") -> BenchResult:
    """Merge workers' results exactly (pure: no I/O, no clock)."""
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part.prime_errors)
    return BenchResult(
        config=config,
        records=merge(part.records for part in parts),
        checks=sorted((part.check for part in parts), key=lambda c: c.worker),
        connect_ms=[ms for part in parts for ms in part.connect_ms],
        connections_opened_measured=sum(p.connections_opened_measured for p in parts),
        primed=sum(part.primed for part in parts),
        prime_errors=dict(errors),
        label=label,
        origin_ns=min((part.origin_ns for part in parts), default=0),
        halt=next((part.halt for part in parts if part.halt is not None), None),
    )


def saturation_index(docs: Sequence[Mapping[str, Any]]) -> int | None:
    """The sweep step past which more load buys little throughput and costs latency (see
    SATURATION_RULE); None when no step completed a request. Walks the steps in order of
    achieved throughput and stops at the first that fails the rule: a later step that
    happens to pass again is noise on a saturated server, not a second knee."""
    steps = sorted(
        (i for i, d in enumerate(docs) if d["completed"] and d["ttft_ms"]["p99"] is not None),
        key=lambda i: docs[i]["request_throughput"],
    )
    if not steps:
        return None
    limit = docs[steps[0]]["ttft_ms"]["p99"] * SATURATION_TTFT_FACTOR
    found = steps[0]
    for before, step in itertools.pairwise(steps):
        grew = docs[step]["request_throughput"] > docs[before]["request_throughput"] * (
            1 + SATURATION_GROWTH
        )
        if not grew or docs[step]["ttft_ms"]["p99"] > limit:
            break
        found = step
    return found


def sweep_document(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A sweep's JSON: the runs in order (each a full single-run document) and the
    saturation point, so a reader need not re-derive it."""
    index = saturation_index(docs)
    point = (
        None
        if index is None
        else {
            "run": index,
            "label": docs[index]["label"],
            "request_throughput": docs[index]["request_throughput"],
            "rule": SATURATION_RULE,
        }
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "stream-engine bench",
        "kind": "sweep",
        "runs": list(docs),
        "saturation": point,
    }
