"""Batch runner: OpenAI Batch JSONL in and out, exactly once, resumable, rate-limited.

    summary = await run_batch(BatchConfig(input_path="in.jsonl", output_path="out.jsonl"))

Modules: `inputs` (parse, validate, dedupe, shard), `store` (output/errors files, resume,
torn-line repair), `runner` (dispatch through limits and engines), `progress` (display and
summary), `summary` (the run's counts), `command` (the CLI verb).
"""

from engine.batch.inputs import BadLine, DuplicateCustomIdError, Request, Shard, scan_input
from engine.batch.runner import BatchConfig, BatchRunner, Endpoint, errors_path_for, run_batch
from engine.batch.store import ResultStore, ResumeState, StoreWriteError, read_state
from engine.batch.summary import BatchSummary

__all__ = [
    "BadLine",
    "BatchConfig",
    "BatchRunner",
    "BatchSummary",
    "DuplicateCustomIdError",
    "Endpoint",
    "Request",
    "ResultStore",
    "ResumeState",
    "Shard",
    "StoreWriteError",
    "errors_path_for",
    "read_state",
    "run_batch",
    "scan_input",
]
