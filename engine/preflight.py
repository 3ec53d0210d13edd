"""A job's first request goes alone: a wrong key, path or host ends the job, not its records.

`batch` and `bench` send their first request by itself and wait for its response headers
(`wait_open`) before sending the rest: no extra request, no extra token. When that request
meets a job-level failure (`engine.retry.job_failure`: 401, 403, 404, no connection), the
command ends with one line naming the cause and the URL (`job_failed`), having written no
record for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.errors import EngineError, JobFailed
from engine.retry import job_failure

__all__ = ["job_failed", "wait_open"]


def job_failed(exc: EngineError, url: str) -> JobFailed | None:
    """`exc` as the job's failure (one line: the cause, the URL, the server's words), or None
    when it is only this request's."""
    cause = job_failure(exc)
    if cause is None:
        return None
    failed = JobFailed(f"{cause}: {url}: {exc.message}", cause=exc)
    failed.custom_id = exc.custom_id
    failed.request_id = exc.request_id
    return failed


async def wait_open(task: asyncio.Future[Any], opened: asyncio.Event) -> None:
    """Until the task's request has its headers (`opened`) or the task has ended; the task's
    outcome stays the task's."""
    waiter = asyncio.ensure_future(opened.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
