"""`BatchSummary`: the counts of one batch run, a plain value the runner bumps and the
progress display and the final report read (neither imports the other's module)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["BatchSummary"]


@dataclass(slots=True)
class BatchSummary:
    """Counts of one run; updated live while it runs (the progress display reads it)."""

    lines: int = 0  # non-blank input lines (whole file)
    requests: int = 0  # valid requests in the shard
    invalid: int = 0  # bad input lines in the shard
    to_do: int = 0  # records this run had to produce (shard minus already done)
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
