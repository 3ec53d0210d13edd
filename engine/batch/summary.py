"""`BatchSummary`: the counts of one batch run, a plain value the runner bumps and the
progress display reads; `format_summary`, the final report in plain text."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Final

__all__ = ["BatchSummary", "format_summary"]

PROBLEM_CHARS: Final = 200  # a bad line's reason may quote a huge value: keep the report short


@dataclass(slots=True)
class BatchSummary:
    """Counts of one run; updated live while it runs (the progress display reads it)."""

    lines: int = 0  # non-blank input lines (whole file)
    requests: int = 0  # valid requests in the shard
    invalid: int = 0  # bad input lines in the shard
    to_do: int = 0  # records this run had to produce (shard minus already done)
    to_send: int = 0  # of those, valid requests (the rest are invalid lines to write)
    already_done: int = 0  # shard records found in the files at start (resume)
    succeeded: int = 0  # this run
    failed: int = 0  # this run, after retries
    invalid_written: int = 0  # bad lines written to the errors file this run
    resumed_failed: int = 0  # lines already in the errors file at start
    repaired_bytes: int = 0  # torn tail truncated on resume
    estimated_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    attempts: int = 0  # HTTP requests of the successful records
    retries: int = 0  # retries sent (any record), each one granted by the limits
    retries_by_kind: Counter[str] = field(default_factory=Counter)
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    requests_by_endpoint: Counter[str] = field(default_factory=Counter)
    concurrency: int = 0  # the configured limit
    concurrency_min: int = 0  # the lowest the adaptive limit went (after 429s)
    problems: list[str] = field(default_factory=list)  # the first invalid lines, "line N: why"
    shard: str = ""  # "I/N" when this summary is one shard's (counts are then the shard's)
    started_s: float = field(default_factory=time.monotonic)
    wall_s: float = 0.0
    dry_run: bool = False
    output_path: str = ""  # the files this run wrote, named in the report
    errors_path: str = ""
    retried_failed: int = 0  # --retry-failed: errors-file records sent again this run
    oversize_requests: int = 0  # estimated above the whole --tpm: each sent alone

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.invalid_written

    @property
    def ok(self) -> bool:
        """Every record of the job succeeded (nothing in the errors file)."""
        if self.dry_run:
            return self.invalid == 0
        return self.failed + self.invalid_written + self.resumed_failed == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for `--json` and scripts."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "started_s"}
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in out.items()}


def _clip(text: str) -> str:
    return text if len(text) <= PROBLEM_CHARS else text[:PROBLEM_CHARS] + "…"


def format_summary(summary: BatchSummary) -> str:
    """The final report: counts, tokens, wall time and errors by kind (plain text)."""
    s = summary
    lines = [
        (
            f"input: {s.lines:,} lines, {s.requests:,} requests"
            f"{f' in shard {s.shard}' if s.shard else ''}, "
            f"{s.invalid:,} invalid, {s.already_done:,} already done"
        ),
    ]
    if s.invalid:
        where = "would go" if s.dry_run else "go"
        lines.append(f"invalid input lines ({where} to the errors file):")
        lines += [f"  {_clip(problem)}" for problem in s.problems]
        if s.invalid > len(s.problems):
            lines.append(f"  … and {s.invalid - len(s.problems):,} more")
    if not s.lines:
        lines.append("the input has no request (an empty file): nothing to do")
    if s.dry_run:
        bad = s.to_do - s.to_send
        lines.append(
            f"dry run: {s.to_send:,} requests to send"
            + (f" and {bad:,} invalid lines to write" if bad else "")
            + f", estimated {s.estimated_tokens:,} tokens for the shard (prompt chars/4 + "
            "output cap); nothing sent"
        )
    else:
        rate = s.finished / s.wall_s if s.wall_s > 0 else 0.0
        lines += [
            (
                f"this run: {s.succeeded:,} succeeded, {s.failed:,} failed, "
                f"{s.invalid_written:,} invalid lines written, in {s.wall_s:.1f} s "
                f"({rate:,.0f} records/s)"
            ),
            (
                f"tokens: {s.input_tokens:,} in + {s.output_tokens:,} out = {s.total_tokens:,}; "
                f"retries: {s.retries:,}"
            ),
        ]
        if s.output_path:
            lines.append(f"output: {s.output_path}; errors: {s.errors_path}")
        if s.repaired_bytes:
            lines.append(f"resume: truncated a torn last line ({s.repaired_bytes} bytes)")
        if s.resumed_failed:
            lines.append(
                f"errors file already held {s.resumed_failed:,} records "
                "(--retry-failed sends them again)"
            )
        if s.oversize_requests:
            lines.append(
                f"--tpm: {s.oversize_requests:,} requests estimated above the whole per-minute "
                "budget were each sent alone"
            )
        if s.retried_failed:
            lines.append(f"--retry-failed: {s.retried_failed:,} records of the errors file")
        if s.concurrency_min < s.concurrency:
            lines.append(
                f"concurrency: backed off on 429 from {s.concurrency:,} "
                f"to {s.concurrency_min:,} at the lowest"
            )
    for title, counter in (
        ("errors by kind", s.errors_by_kind),
        ("retries by kind", s.retries_by_kind),
        ("requests by endpoint", s.requests_by_endpoint),
    ):
        if counter and (title != "requests by endpoint" or len(counter) > 1):
            items = ", ".join(f"{k}: {v:,}" for k, v in counter.most_common())
            lines.append(f"{title}: {items}")
    return "\n".join(lines)
