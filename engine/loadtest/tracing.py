"""When each bench request really left, and what each new connection cost: aiohttp's
tracing, matched to the request through a context variable.

`Engine.run` sends the request from the calling task (its reader task inherits the context),
so the trace callbacks, which run where the request is sent, find the request's `SendStamp`
in `SENDING`.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp  # only for TraceConfig: the engine has no hook for these moments

__all__ = ["SENDING", "ConnectTracer", "SendStamp"]


@dataclass(slots=True)
class SendStamp:
    """When one measured request really left: filled by trace callbacks in its reader task."""

    sent_ns: int = 0  # request headers written to the socket (first attempt)
    pool_wait_ns: int = 0  # time spent waiting for a free pool connection before that
    queued_ns: int = 0  # start of the current wait, 0 when not waiting


SENDING: ContextVar[SendStamp | None] = ContextVar("stream_engine_bench_send", default=None)


class ConnectTracer:
    """Times every new pool connection (TCP, and TLS when https) with aiohttp's tracing, and
    stamps when each measured request really went out (after any wait for a connection).

    The engine has no hook for this, so the trace config is appended to its session's
    `trace_configs` list (a public attribute, read per request)."""

    def __init__(self) -> None:
        self.connect_ms: list[float] = []
        self.opened_after: list[int] = []  # perf_counter_ns of each connection's end
        self._starts: dict[int, int] = {}
        config = aiohttp.TraceConfig()
        config.on_connection_create_start.append(self._start)
        config.on_connection_create_end.append(self._end)
        config.on_connection_queued_start.append(self._queued)
        config.on_connection_queued_end.append(self._dequeued)
        config.on_request_headers_sent.append(self._sent)
        config.freeze()
        self.config = config

    async def _queued(self, _s: object, _c: object, _p: object) -> None:
        stamp = SENDING.get()
        if stamp is not None and not stamp.sent_ns:
            stamp.queued_ns = time.perf_counter_ns()

    async def _dequeued(self, _s: object, _c: object, _p: object) -> None:
        stamp = SENDING.get()
        if stamp is not None and stamp.queued_ns:
            stamp.pool_wait_ns += time.perf_counter_ns() - stamp.queued_ns
            stamp.queued_ns = 0

    async def _sent(self, _s: object, _c: object, _p: object) -> None:
        stamp = SENDING.get()
        if stamp is not None and not stamp.sent_ns:  # a retry is not a later send
            stamp.sent_ns = time.perf_counter_ns()

    async def _start(self, _s: object, ctx: Any, _p: object) -> None:
        self._starts[id(ctx)] = time.perf_counter_ns()

    async def _end(self, _s: object, ctx: Any, _p: object) -> None:
        now = time.perf_counter_ns()
        start = self._starts.pop(id(ctx), None)
        if start is not None:
            self.connect_ms.append((now - start) / 1e6)
            self.opened_after.append(now)
