"""The retry rule: which failures are sent again, and after how long.

Connect errors, 408, 409, 429, 5xx and streams that broke before their first event are sent
again, with exponential backoff and full jitter; the server's `Retry-After` wins. A stream
that broke *after* its first event is sent again only under `RetryPolicy(mid_stream=True)`,
and only where nothing of it reached the caller (`Engine.run` with no handlers of the caller's,
which keeps the answer until it is whole: the batch runner's case).
"""

from __future__ import annotations

import time
from typing import Final

from engine.config import RetryPolicy
from engine.errors import (
    APIStatusError,
    ConnectError,
    ConnectTimeout,
    EngineError,
    ErrorEvent,
    FirstByteTimeout,
    FirstTokenTimeout,
    IdleTimeout,
    ProtocolError,
    StreamTruncated,
    TransportError,
)
from engine.limits import backoff_delay

__all__ = [
    "MID_STREAM_ERRORS",
    "RETRY_STATUSES",
    "RetryPolicy",
    "error_event_delay",
    "gave_up",
    "job_failure",
    "mid_stream_delay",
    "retry_delay",
]

RETRY_STATUSES: Final = frozenset({408, 409, 429})
# Statuses that say the job is wrong, not the request: every request would get the same.
JOB_STATUSES: Final = {
    401: "the server refused the API key",
    403: "the API key may not use this endpoint",
    404: "no such endpoint (check the base URL and path)",
}


# What a stream that broke after its first event raises: cut, gone quiet, malformed.
MID_STREAM_ERRORS: Final = (
    StreamTruncated,
    IdleTimeout,
    FirstTokenTimeout,
    TransportError,
    ProtocolError,
)


def retry_delay(exc: EngineError, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before retry number `attempt + 1`, or None when `exc` must not be
    retried (its kind, or `policy.max_retries`). One rule for the engine and for callers that
    send their own retries (the batch runner, through its rate limits)."""
    if attempt >= policy.max_retries:
        return None
    if isinstance(exc, APIStatusError):
        if not (exc.status in RETRY_STATUSES or exc.status >= 500):
            return None
        if exc.retry_after_s is not None:
            return min(exc.retry_after_s, policy.max_retry_after_s)
    elif not isinstance(
        exc,
        TransportError
        | ConnectTimeout
        | FirstByteTimeout
        | IdleTimeout
        | FirstTokenTimeout
        | StreamTruncated,
    ):
        return None
    return backoff_delay(attempt, policy.base_s, policy.cap_s)


def mid_stream_delay(exc: EngineError, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before sending again a stream that broke after its first event, or
    None (not allowed by `policy`, not such a break, or `max_retries` reached)."""
    if not policy.mid_stream or attempt >= policy.max_retries:
        return None
    if not isinstance(exc, MID_STREAM_ERRORS):
        return None
    return backoff_delay(attempt, policy.base_s, policy.cap_s)


# How a server names an error that a new attempt may not meet: an overloaded or failing
# upstream (a gateway's `{"error": {"code": 502}}` chunk, OpenAI's `server_error` event).
TRANSIENT_CODES: Final = frozenset(
    {"server_error", "internal_error", "overloaded", "overloaded_error", "rate_limit_exceeded"}
)


def error_event_delay(exc: EngineError, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before sending again a stream that ended in an error event before its
    first token, when the server's code says the failure was passing (429, 5xx, overloaded);
    None otherwise. The caller must know that nothing of the stream reached anyone."""
    if not isinstance(exc, ErrorEvent) or attempt >= policy.max_retries:
        return None
    code = (exc.code or "").lower()
    passing = code in TRANSIENT_CODES or code == "429" or (code.isdigit() and code[0] == "5")
    return backoff_delay(attempt, policy.base_s, policy.cap_s) if passing else None


def gave_up(exc: EngineError, attempts: int, started_ns: int) -> EngineError:
    """`exc`, its message saying what the whole call took when it was retried: the last
    attempt's "no event for 60 s" alone hides that three attempts took three minutes."""
    exc.attempts = attempts
    if attempts > 1:
        spent_s = (time.perf_counter_ns() - started_ns) / 1e9
        exc.message += f" (gave up after {attempts} attempts, {spent_s:.1f} s)"
        exc.args = (exc.message,)
    return exc


def job_failure(exc: EngineError) -> str | None:
    """Why `exc` is the job's failure rather than the request's (a wrong key, path or host:
    401, 403, 404, a redirect, no connection), in a few words; None for a request's own."""
    if isinstance(exc, APIStatusError):
        if 300 <= exc.status < 400:
            return "the endpoint has moved"
        return JOB_STATUSES.get(exc.status)
    if isinstance(exc, ConnectError):
        return "the server cannot be reached"
    return None
