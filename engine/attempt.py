"""One attempt's reader: the body of one response, read, stamped, parsed and queued.

The request is sent and its headers read by the caller's own task (`engine.transport`); the
reader task then reads `resp.content.iter_any()`, stamps each chunk with `perf_counter_ns()`
as it arrives, feeds the SSE parser and puts the chunk's events on the stream's `ChunkQueue`.
It takes plain arguments (the exchange, the queue's size, the event cap, the registry of
readers that its engine cancels on close), never the engine.

Timeouts after the headers are enforced by one lazy watchdog timer per stream: it is armed
once and, when it fires, re-arms itself for the next deadline if data arrived meanwhile, so
the per-chunk cost is one attribute store rather than a timer per read.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError

from engine.chunks import END, ChunkQueue
from engine.content_encoding import inflater_for
from engine.errors import (
    SNIPPET_BYTES,
    EngineError,
    EngineTimeout,
    FirstTokenTimeout,
    IdleTimeout,
    ProtocolError,
    StreamError,
    StreamTruncated,
    TotalTimeout,
    TransportError,
)
from engine.events import Dialect, EventDecoder
from engine.redaction import redact, redact_bytes

if TYPE_CHECKING:
    from engine.transport import Exchange

__all__ = ["Attempt"]

DRAIN_S: Final = 2.0  # how long a finished stream may take to reach EOF and free its connection
# How an event stream can begin (after an optional BOM): a known field, a comment, a blank line.
_SSE_STARTS: Final = (b"data", b"event", b"id", b"retry", b":", b"\n", b"\r")
Readers = dict[asyncio.Task[None], ChunkQueue]


def _looks_like_sse(head: bytes) -> bool:
    """Whether a body's first bytes could begin an event stream (used only on error paths)."""
    return head.removeprefix(b"\xef\xbb\xbf").startswith(_SSE_STARTS)


class Attempt:
    """One HTTP request (`exchange`) and the reader task of its body.

    The request is sent and its headers are read by the caller's own task (`open`), so the
    request leaves in the same loop iteration as the call; only then does the reader task start
    on the body. A task started first would send one loop iteration later, and on a busy loop
    (hundreds of streams) that iteration is milliseconds of TTFT that the server did not add."""

    __slots__ = (
        "blocked",
        "custom_id",
        "decoder",
        "exchange",
        "first_token_ns",
        "last_ns",
        "max_event_bytes",
        "queue",
        "reader",
        "readers",
        "timeouts",
        "timer",
    )

    def __init__(
        self,
        exchange: Exchange,
        custom_id: str | None,
        *,
        queue_size: int,
        max_event_bytes: int,
        readers: Readers,
    ) -> None:
        self.exchange = exchange
        self.custom_id = custom_id
        self.timeouts = exchange.timeouts
        self.max_event_bytes = max_event_bytes
        self.readers = readers  # the engine's: it cancels them all on close
        self.queue = ChunkQueue(queue_size)
        self.decoder = EventDecoder()
        self.timer: asyncio.TimerHandle | None = None
        self.first_token_ns: int | None = None
        self.last_ns = exchange.started_ns
        self.blocked = False  # the reader waits on a full queue: not the server's idle time
        self.reader: asyncio.Task[None] | None = None

    @property
    def started_ns(self) -> int:
        return self.exchange.started_ns

    async def open(self) -> None:
        """Send the request and read its headers here, then start the reader on the body."""
        resp = await self.exchange.open()
        readers = self.readers
        self.reader = reader = asyncio.get_running_loop().create_task(self._read(resp))
        readers[reader] = self.queue
        reader.add_done_callback(lambda task: readers.pop(task, None))

    @property
    def reading(self) -> bool:
        return self.reader is not None and not self.reader.done()

    def abort(self) -> None:
        """Stop now (consumer gone or cancelled): drop the connection, never reuse it."""
        self._disarm()
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
        self.exchange.close()

    # --- the reader task -------------------------------------------------------------------

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        try:
            self._arm()
            await self._pump(resp)
            self._disarm()
            resp.release()  # at EOF: the connection is back in the pool before the consumer ends
            await self.queue.put(END)
        except asyncio.CancelledError:
            raise
        except EngineError as exc:  # tagged by the consumer, where it leaves the engine
            await self.queue.put(exc)
        except aiohttp.ClientError as exc:  # a safety net: the transport and _pump map theirs
            await self.queue.put(TransportError(f"connection broke: {self.exchange.describe(exc)}"))
        except Exception as exc:  # a bug, surfaced to the consumer rather than lost in a task
            await self.queue.put(exc)
        finally:
            self._disarm()
            resp.release()

    async def _pump(self, resp: aiohttp.ClientResponse) -> None:
        parser = self.decoder.parser(self.max_event_bytes)
        decoder = self.decoder
        queue = self.queue
        clock = time.perf_counter_ns
        nbytes = 0
        head = b""  # the body's first bytes, for the error if it is not an event stream
        broke: str | None = None
        # Compressed although we asked for identity: inflated per chunk, stamped on arrival.
        inflater = inflater_for(resp.headers.get("Content-Encoding"))
        try:
            async for raw in resp.content.iter_any():
                now = clock()
                chunk = raw if inflater is None else inflater.feed(raw)
                if nbytes < SNIPPET_BYTES:
                    head += chunk[: SNIPPET_BYTES - nbytes]
                nbytes += len(chunk)
                messages = parser.feed(chunk)
                if not messages:
                    continue  # comments and partial events: idle time goes on
                self.last_ns = now
                events = decoder.scan(messages, now)
                if events:
                    if self.first_token_ns is None and decoder.first_token(events, now):
                        self.first_token_ns = now
                    if queue.full():
                        self.blocked = True
                        await queue.put((now, events))
                        self.blocked = False
                    else:
                        queue.put_nowait((now, events))
                if decoder.finished:
                    await self._drain(resp)
                    return
        except aiohttp.ClientError as exc:  # the connection dropped mid-body (payload cut, reset)
            broke = self.exchange.describe(exc)
        except HttpProcessingError as exc:  # the body's HTTP framing broke (a bad chunk)
            raise TransportError(
                f"malformed HTTP body from {self.exchange.url}: {self.exchange.describe(exc)}"
            ) from None
        parser.close()
        if (
            broke is None
            and decoder.dialect in (Dialect.CHAT, Dialect.COMPLETIONS)
            and decoder.finish_reason is not None
        ):
            return  # a chat server that omits [DONE] after the last chunk
        if decoder.dialect is None and nbytes and not _looks_like_sse(head):
            raise ProtocolError(
                f"body is not an event stream (HTTP {self.exchange.status})",
                raw=self.exchange.redact_bytes(head),
                status=self.exchange.status,
            )
        how = "the body ended" if broke is None else f"the connection dropped ({broke})"
        raise StreamTruncated(
            f"{how} without a terminal event after {nbytes} bytes"
            + (" (an unfinished event was discarded)" if parser.partial_discarded else "")
        )

    async def _drain(self, resp: aiohttp.ClientResponse) -> None:
        """Read to EOF after the last event so the connection can be reused."""
        self._disarm()
        if resp.content.at_eof():
            return  # the usual case: the body's end arrived with the last event
        try:
            async with asyncio.timeout(DRAIN_S):
                async for _ in resp.content.iter_any():
                    pass
        except (TimeoutError, aiohttp.ClientError):
            resp.close()

    # --- the watchdog ----------------------------------------------------------------------

    def _arm(self) -> None:
        t = self.timeouts
        if t.idle_s is None and t.total_s is None and t.first_token_s is None:
            return
        self._check()

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check(self) -> None:
        """Fire the earliest expired deadline, or sleep until the next one."""
        now = time.perf_counter_ns()
        t = self.timeouts
        deadlines: list[tuple[int, type[EngineTimeout], str]] = []
        if t.total_s is not None:
            deadlines.append(
                (
                    self.exchange.started_ns + int(t.total_s * 1e9),
                    TotalTimeout,
                    f"stream exceeded its total limit of {t.total_s} s",
                )
            )
        if t.first_token_s is not None and self.first_token_ns is None:
            deadlines.append(
                (
                    self.exchange.started_ns + int(t.first_token_s * 1e9),
                    FirstTokenTimeout,
                    f"no token within {t.first_token_s} s",
                )
            )
        if t.idle_s is not None:
            start = now if self.blocked else self.last_ns
            deadlines.append(
                (start + int(t.idle_s * 1e9), IdleTimeout, f"no event for {t.idle_s} s")
            )
        when, cls, message = min(deadlines, key=lambda d: d[0])
        resp = self.exchange.resp
        if when <= now and resp is not None:
            self.timer = None
            resp.content.set_exception(cls(message))
            return
        self.timer = asyncio.get_running_loop().call_later((when - now) / 1e9, self._check)

    # --- errors ----------------------------------------------------------------------------

    def tag(self, exc: EngineError) -> EngineError:
        """`exc`, naming this request (ids, HTTP status) and with its credentials redacted."""
        exchange = self.exchange
        exc.request_id = exc.request_id or exchange.request_id
        exc.custom_id = exc.custom_id or self.custom_id
        if isinstance(exc, StreamError | ProtocolError) and exc.status is None and exchange.status:
            exc.status = exchange.status
        # An error event or a failed response may quote the request, credentials included:
        # the message, the event's data and the offending bytes are all shown or written.
        secrets = exchange.secrets
        message = redact(exc.message, secrets)
        if message != exc.message:
            exc.message = message
            exc.args = (message,)
        if isinstance(exc, StreamError) and exc.data is not None:
            raw = orjson.dumps(exc.data, default=str)
            clean = redact_bytes(raw, secrets)
            if clean != raw:
                exc.data = orjson.loads(clean)
        elif isinstance(exc, ProtocolError) and isinstance(exc.raw, bytes):
            exc.raw = redact_bytes(exc.raw, secrets)
        return exc
