"""Per-request records (filled from a result or a failure) and the exact statistics computed
from them.

Every figure is computed from all per-request values at once (numpy, linear interpolation),
never from pre-aggregated percentiles: merging workers is concatenating their records, so the
merged percentiles are exactly those of one process that saw every request. Records hold
offsets from the start of the measured window (the clock is `perf_counter_ns`, which on Linux
is CLOCK_MONOTONIC and shared by every process on the machine).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import APIStatusError, EngineError, ProtocolError, StreamError
from engine.redaction import redact

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from engine.result import StreamResult

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
STAT_KEYS = (*PERCENTILES, "mean", "max", "min", "count")
EXAMPLES = 3  # messages and request ids kept per error kind: enough to see a pattern
MESSAGE_CHARS = 500  # a failure's message as recorded: an error body can be kilobytes


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it. Latencies run from the *intended* start."""

    index: int
    worker: int
    warmup: bool
    intended_s: float  # offset of the intended start from the measured window's start
    lag_ms: float  # how late the request's headers actually left (schedule lag)
    ok: bool
    error: str | None = None  # EngineError.kind, or the exception type for a client bug
    status: int | None = None  # HTTP status (a failure's, when it got that far)
    finish_reason: str | None = None  # how a completed stream ended: "stop", "length", ...
    incomplete: bool = False  # completed, but cut short (output cap, content filter)
    first_byte_ms: float | None = None
    ttft_ms: float | None = None  # to the first token of any kind (reasoning, tool call, text)
    e2e_ms: float | None = None  # to the last event, or to the failure
    output_tokens: int = 0  # usage (reasoning included, as the API counts), else timed tokens
    input_tokens: int | None = None
    deltas: int = 0  # timed tokens: token-bearing events of any kind
    attempts: int = 1
    reconnects: int = 0  # re-sent on a fresh connection because a pooled one was dead
    request_id: str | None = None
    pool_wait_ms: float = 0.0  # part of lag_ms spent waiting for a free pool connection
    message: str | None = None  # why it failed (credentials redacted); None on success
    itl_ms: list[float] = field(default_factory=list)  # gaps between timed tokens (any kind)
    ttft_text_ms: float | None = None  # to the first visible text (None: the answer had none)
    reasoning_tokens: int | None = None  # usage's share of output_tokens (None: no usage)
    cached_tokens: int | None = None  # usage's input tokens served from the prompt cache
    tool_calls: int = 0  # tool calls in the answer, every choice
    retry_after_s: float | None = None  # a failure's Retry-After: the server asked to wait
    waited_s: float = 0.0  # closed loop: how long the user then waited before its next send
    # What the workload meant to send (engine.loadtest.workload): the prompt's length in the
    # workload's count (true tokens with a tokenizer, else words plus template overhead) and
    # the output length asked for (None: a file's own bodies, which say nothing of either).
    asked_input_tokens: int | None = None
    asked_output_tokens: int | None = None
    session: int | None = None  # multi-turn: the conversation this request is a turn of
    turn: int | None = None  # ... and which turn, from 0 (None: single requests)
    prefix_group: int | None = None  # --shared-prefix-tokens: the system prompt it shares
    cancelled: bool = False  # cut off on purpose by --cancel-rate (not ok, not a failure)

    @property
    def tpot_ms(self) -> float | None:
        """(last token - first token) / (timed tokens - 1), i.e. the mean gap: the decode
        speed a user sees, from the tokens actually timed (usage may count tokens that never
        came as events of their own), reasoning and tool calls included."""
        if not self.itl_ms:
            return None
        return math.fsum(self.itl_ms) / len(self.itl_ms)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# The record's fields in order, the derived figures, then the free-text message last so the
# short columns line up when the file is read as text.
CSV_COLUMNS = [f.name for f in fields(RequestRecord) if f.name not in ("itl_ms", "message")] + [
    "tpot_ms",
    "itl_ms_mean",
    "itl_ms_max",
    "message",
]


def csv_row(record: RequestRecord) -> list[Any]:
    data = record.as_dict()
    itl = data.pop("itl_ms")
    data.update(
        tpot_ms=record.tpot_ms,
        itl_ms_mean=float(np.mean(itl)) if itl else None,
        itl_ms_max=max(itl) if itl else None,
    )
    return [data[name] for name in CSV_COLUMNS]


def error_kind(exc: BaseException) -> str:
    """`EngineError.kind`, or the exception's type for a client bug."""
    return exc.kind if isinstance(exc, EngineError) else type(exc).__name__


def record_failure(record: RequestRecord, exc: BaseException, secrets: tuple[str, ...]) -> None:
    """Enough to tell why it failed: a kind alone ("TransportError: 31") does not say.

    The message is redacted here, at the source, because servers reflect credentials and
    not every message the engine builds (an error event's text) passes its redaction."""
    record.error = error_kind(exc)
    text = (exc.message if isinstance(exc, EngineError) else str(exc)) or type(exc).__name__
    text = redact(text, secrets)
    record.message = text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "…"
    if isinstance(exc, APIStatusError | StreamError | ProtocolError):
        record.status = exc.status
    if isinstance(exc, APIStatusError):
        record.retry_after_s = exc.retry_after_s
    if isinstance(exc, EngineError):
        record.request_id = exc.request_id
        record.attempts = exc.attempts


def record_result(record: RequestRecord, result: StreamResult, intended_ns: int) -> None:
    """Latencies from the intended start (TTFT: the first token of any kind; TTFT to text:
    the first visible text); tokens from usage, else the timed token events."""
    times = result.token_times_ns
    record.ok = True
    record.status = result.http_status
    record.finish_reason = result.finish_reason
    record.incomplete = result.status == "incomplete"
    record.attempts = result.attempts
    record.reconnects = result.reconnects
    record.request_id = result.request_id
    if result.first_byte_ns is not None:
        record.first_byte_ms = (result.first_byte_ns - intended_ns) / 1e6
    if result.first_token_ns is not None:
        record.ttft_ms = (result.first_token_ns - intended_ns) / 1e6
    if result.first_text_ns is not None:
        record.ttft_text_ms = (result.first_text_ns - intended_ns) / 1e6
    record.e2e_ms = (result.finished_ns - intended_ns) / 1e6
    record.deltas = len(times)
    record.itl_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(times)]
    record.tool_calls = sum(len(choice.tool_calls) for choice in result.choices)
    usage = result.usage
    record.output_tokens = usage.output_tokens if usage is not None else len(times)
    if usage is not None:
        record.input_tokens = usage.input_tokens
        record.reasoning_tokens = usage.reasoning_tokens
        record.cached_tokens = usage.cached_tokens


def stats(values: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """p50 … p99.9, mean, max, min and count of all values (None when there are none)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {key: (0 if key == "count" else None) for key in STAT_KEYS}
    cuts = np.percentile(arr, list(PERCENTILES.values()))
    out: dict[str, float | int | None] = {
        key: round(float(v), 4) for key, v in zip(PERCENTILES, cuts, strict=True)
    }
    out.update(
        mean=round(float(arr.mean()), 4),
        max=round(float(arr.max()), 4),
        min=round(float(arr.min()), 4),
        count=int(arr.size),
    )
    return out


def merge(parts: Iterable[Sequence[RequestRecord]]) -> list[RequestRecord]:
    """The union of several workers' records, in intended-start order (a pure function)."""
    chained = itertools.chain.from_iterable(parts)
    return sorted(chained, key=lambda r: (r.intended_s, r.index, r.worker))


def measured(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if not r.warmup]


# A request the load cancelled on purpose (--cancel-rate) is its own outcome, as GuideLLM's
# "incomplete" is beside its "successful" and "errored": neither completed nor failed, so it
# is in no latency, error count or goodput denominator (a cut answer's E2E is the cut's).
def completed(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if r.ok and not r.cancelled]


def failed(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if not r.ok and not r.cancelled]


def values(records: Iterable[RequestRecord], metric: str) -> np.ndarray:
    """One metric over the completed requests; `itl_ms` is every gap of every request."""
    ok = completed(records)
    if metric == "itl_ms":
        return np.fromiter(itertools.chain.from_iterable(r.itl_ms for r in ok), np.float64)
    raw = (getattr(r, metric) for r in ok)
    return np.array([v for v in raw if v is not None], dtype=np.float64)


def meets_slo(record: RequestRecord, slo: Mapping[str, float]) -> bool:
    """Success within every objective; `itl_ms` bounds the request's worst gap."""
    if not record.ok or record.cancelled:
        return False
    for metric, limit in slo.items():
        if metric == "itl_ms":
            if record.itl_ms and max(record.itl_ms) > limit:
                return False
            continue
        value = getattr(record, metric)
        if value is None or value > limit:
            return False
    return True


def ended_s(record: RequestRecord) -> float:
    """When the request ended (or failed), in seconds from the measured window's start."""
    return record.intended_s + (record.e2e_ms or 0.0) / 1000


def window_s(records: Sequence[RequestRecord]) -> float:
    """Measured duration: window start to the last measured request's end."""
    return max([*map(ended_s, records), 1e-9])


def error_details(failed: Iterable[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Per error kind, most frequent first: what tells *why* requests failed (HTTP statuses,
    example messages, when it began, ids to find in the server's logs), not just how many."""
    by_kind: dict[str, list[RequestRecord]] = {}
    for record in sorted(failed, key=ended_s):
        by_kind.setdefault(record.error or "unknown", []).append(record)
    details: dict[str, dict[str, Any]] = {}
    for kind, group in sorted(by_kind.items(), key=lambda item: -len(item[1])):
        statuses = Counter("none" if r.status is None else str(r.status) for r in group)
        details[kind] = {
            "count": len(group),
            "statuses": dict(statuses.most_common()),
            "messages": list(dict.fromkeys(r.message for r in group if r.message))[:EXAMPLES],
            "first_at_s": round(ended_s(group[0]), 6),
            "request_ids": [r.request_id for r in group if r.request_id][:EXAMPLES],
        }
    return details


def requested_length(ok: Sequence[RequestRecord], tokens: int | None) -> dict[str, Any] | None:
    """When the load asked for its answers' length (`tokens`; None: it did not), how many
    completed requests reached it and how the others ended, by finish reason: "length" in
    the API's words is then what was asked for, not a cut-off. A record's own asked length
    (a length distribution) is its mark; `tokens` is then only their mean."""
    if tokens is None:
        return None
    short = Counter(
        r.finish_reason or "none"
        for r in ok
        if r.output_tokens < (tokens if r.asked_output_tokens is None else r.asked_output_tokens)
    )
    return {
        "tokens": tokens,
        "reached": len(ok) - sum(short.values()),
        "short": dict(short.most_common()),
    }


SPREAD = {"p5": 5.0, "p50": 50.0, "p95": 95.0}


def spread(values: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """A length distribution: mean, sample stdev, p5/p50/p95, min, max, count (None: none)."""
    arr = np.asarray(values, dtype=np.float64)
    keys = ("mean", "stdev", *SPREAD, "min", "max")
    if arr.size == 0:
        return {**dict.fromkeys(keys), "count": 0}
    cuts = np.percentile(arr, list(SPREAD.values()))
    out = {
        "mean": float(arr.mean()),
        "stdev": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        **{key: float(v) for key, v in zip(SPREAD, cuts, strict=True)},
        "min": float(arr.min()),
        "max": float(arr.max()),
    }
    return {**{k: round(v, 4) for k, v in out.items()}, "count": int(arr.size)}


def _side(done: Sequence[RequestRecord], asked: str, received: str) -> dict[str, Any] | None:
    """One side (input or output): the asked lengths of every request sent, the received
    (usage) of the completed ones, and the mean of received / asked over requests with both."""
    sent = [getattr(r, asked) for r in done if getattr(r, asked) is not None]
    if not sent:
        return None
    pairs = [
        (getattr(r, received), getattr(r, asked))
        for r in completed(done)
        if getattr(r, received) is not None and getattr(r, asked)
    ]
    return {
        "asked": spread(sent),
        "received": spread([got for got, _ in pairs]),
        "ratio_mean": round(math.fsum(got / want for got, want in pairs) / len(pairs), 4)
        if pairs
        else None,
    }


def lengths(done: Sequence[RequestRecord]) -> dict[str, Any] | None:
    """Asked against received lengths, when the workload said what it asked (None: a file's
    own bodies). The asked side is the workload as sent (failed and cancelled requests too);
    the received side, from usage, only what completed. `short`: completed answers that
    ended before their asked output, by finish reason ("stop": the model ended early,
    "length": a cap below the ask, such as the server's context limit, cut it)."""
    sides = {
        "input": _side(done, "asked_input_tokens", "input_tokens"),
        "output": _side(done, "asked_output_tokens", "output_tokens"),
    }
    if sides["input"] is None and sides["output"] is None:
        return None
    if (output := sides["output"]) is not None:
        asked = [r for r in completed(done) if r.asked_output_tokens is not None]
        short = [r for r in asked if r.output_tokens < (r.asked_output_tokens or 0)]
        reasons = Counter(r.finish_reason or "none" for r in short)
        output["short"] = {
            "count": len(short),
            "share": len(short) / len(asked) if asked else 0.0,
            "reasons": dict(reasons.most_common()),
        }
    return sides


def summarize(
    records: Sequence[RequestRecord],
    slo: Mapping[str, float],
    asked_tokens: int | None = None,
    *,
    cancelling: bool = False,
) -> dict[str, Any]:
    """The schema's figures for the measured records (see docs/loadtest.md); `asked_tokens`:
    the length every answer was asked for, if it was; `cancelling`: the load cancels some
    requests on purpose (`cancelled` is then there even when none was cut)."""
    done = measured(records)
    ok = completed(done)
    bad = failed(done)
    duration = window_s(done)
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.input_tokens or 0 for r in ok)
    reasoning = values(done, "reasoning_tokens")
    good = sum(meets_slo(r, slo) for r in done) if slo else None
    details = error_details(bad)
    cut = [r for r in done if r.cancelled]
    # Only the sections a load has: a document without them reads as before (compare too).
    cancelled = (
        {"cancelled": {"count": len(cut), "share": len(cut) / len(done) if done else 0.0}}
        if cancelling or cut
        else {}
    )
    asked = lengths(done)
    return {
        "duration_s": round(duration, 6),
        "completed": len(ok),
        "failed": len(bad),
        **cancelled,
        "errors": {kind: detail["count"] for kind, detail in details.items()},
        "error_details": details,
        "end_reasons": dict(Counter(r.finish_reason or "none" for r in ok).most_common()),
        "incomplete": sum(r.incomplete for r in ok),
        "requested_length": requested_length(ok, asked_tokens),
        **({} if asked is None else {"lengths": asked}),
        "reconnects": sum(r.reconnects for r in done),
        "request_throughput": len(ok) / duration,
        "output_token_throughput": out_tokens / duration,
        "total_token_throughput": (out_tokens + in_tokens) / duration,
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "reasoning_tokens": int(reasoning.sum()),
        "cached_tokens": sum(r.cached_tokens or 0 for r in ok),
        "tool_calls": sum(r.tool_calls for r in ok),
        "ttft_ms": stats(values(done, "ttft_ms")),
        "ttft_text_ms": stats(values(done, "ttft_text_ms")),
        "itl_ms": stats(values(done, "itl_ms")),
        "tpot_ms": stats(values(done, "tpot_ms")),
        "e2e_ms": stats(values(done, "e2e_ms")),
        "first_byte_ms": stats(values(done, "first_byte_ms")),
        "output_tokens_per_request": stats(values(done, "output_tokens")),
        "reasoning_tokens_per_request": stats(reasoning),
        "schedule_lag_ms": stats([r.lag_ms for r in done]),
        "pool_wait_ms": stats([r.pool_wait_ms for r in done]),
        "goodput": None
        if good is None
        else {
            "slo": dict(slo),
            "requests": good,
            "request_rate": good / duration,
            "fraction": good / (len(ok) + len(bad)) if ok or bad else 0.0,
        },
        "concurrency": concurrency_stats(done),
        "retry_after": retry_after_stats(done),
    }


def retry_after_stats(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """How often the server asked to slow down (Retry-After) and how long users then waited
    (closed loop; an open loop keeps its schedule, so it never waits)."""
    asked = [r.retry_after_s for r in records if r.retry_after_s is not None]
    waits = [r.waited_s for r in records if r.waited_s > 0]
    return {
        "requests": len(asked),
        "max_s": max(asked) if asked else None,
        "waits": len(waits),
        "waited_s": round(math.fsum(waits), 6),
    }


def concurrency_stats(records: Sequence[RequestRecord]) -> dict[str, float]:
    """Time-weighted mean and the peak of requests in flight (from intended start to end)."""
    times, level = concurrency_curve(records)
    if level.size < 2:
        return {"mean": 0.0, "max": 0.0}
    span = times[-1] - times[0]
    mean = float(np.sum(level[:-1] * np.diff(times)) / span) if span > 0 else 0.0
    return {"mean": round(mean, 3), "max": float(level.max())}


def concurrency_curve(records: Sequence[RequestRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Step function of requests in flight: event times (s) and the level after each."""
    starts = [r.intended_s for r in records]
    ends = [ended_s(r) for r in records]
    times = np.array(starts + ends)
    steps = np.array([1] * len(starts) + [-1] * len(ends))
    order = np.lexsort((-steps, times))
    return times[order], np.cumsum(steps[order])


def token_times(records: Iterable[RequestRecord]) -> np.ndarray:
    """Arrival offsets (s) of every output token, rebuilt from TTFT and the gaps."""
    out: list[np.ndarray] = []
    for r in records:
        if r.ttft_ms is None:
            continue
        first = r.intended_s * 1000 + r.ttft_ms
        out.append((first + np.concatenate(([0.0], np.cumsum(r.itl_ms)))) / 1000)
    return np.concatenate(out) if out else np.empty(0)
