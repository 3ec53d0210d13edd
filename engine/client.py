"""`Engine`: the connection pool, request building, timeouts, retries and the stream lifecycle.

Per stream, one reader task reads `resp.content.iter_any()`, stamps each chunk with
`perf_counter_ns()` as it arrives, feeds the SSE parser and puts the chunk's events, as one
flat batch (no object per event: see `engine.events.EventDecoder`), on a bounded queue. The
consumer (`stream()` / `run()`) takes batches off the queue and calls the handlers, so a slow
handler never distorts arrival times, and a full queue stops the reader, which stops reading
the socket: backpressure reaches the server through TCP.

Timeouts after the headers are enforced by one lazy watchdog timer per stream: it is armed
once and, when it fires, re-arms itself for the next deadline if data arrived meanwhile, so
the per-chunk cost is one attribute store rather than a timer per read.

aiohttp exceptions stop here: each is described by type and message (`_describe`), never by
repr, and never chained (`raise ... from exc` would keep it as `__cause__`): the args and repr
of aiohttp's `ClientResponseError` hold the request headers, Authorization included. Text a
server may have reflected from the request is redacted as well (`engine.redaction`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Self

import aiohttp
import orjson

from engine.assembly import MAX_RESPONSE_CHARS, Choice, ResponseAssembler, ToolCall
from engine.errors import (
    SNIPPET_BYTES,
    APIStatusError,
    ConfigError,
    ConnectTimeout,
    EngineClosed,
    EngineError,
    EngineTimeout,
    ErrorEvent,
    FirstByteTimeout,
    FirstTokenTimeout,
    IdleTimeout,
    ProtocolError,
    StreamError,
    StreamTruncated,
    TotalTimeout,
    TransportError,
    status_error_class,
)
from engine.events import Dialect, EventDecoder, Flat, StreamEvent, Usage, events_of
from engine.handlers import Handler, split_handlers
from engine.limits import backoff_delay, parse_retry_after
from engine.redaction import redact, redact_bytes, secret_values
from engine.sse import MAX_EVENT_BYTES

__all__ = ["DEFAULT_BASE_URL", "Engine", "RetryPolicy", "StreamResult", "Timeouts"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
ENDPOINT_PATHS: Final = {Dialect.RESPONSES: "/responses", Dialect.CHAT: "/chat/completions",
                         Dialect.COMPLETIONS: "/completions"}
RETRY_STATUSES: Final = frozenset({408, 409, 429})
ERROR_BODY_LIMIT: Final = 64 * 1024
DRAIN_S: Final = 2.0  # how long a finished stream may take to reach EOF and free its connection
_END: Final = None  # queue item: the stream ended cleanly
# How an event stream can begin (after an optional BOM): a known field, a comment, a blank line.
_SSE_STARTS: Final = (b"data", b"event", b"id", b"retry", b":", b"\n", b"\r")


def _describe(exc: BaseException) -> str:
    """One line naming an aiohttp error: its type and message, never its repr or args."""
    # ClientResponseError's str() adds the URL and its repr/args the request headers; its
    # `message` (e.g. aiohttp's parser quoting a bad status line) is what the server did.
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    text = " ".join(str(text).split())  # the parser's multi-line caret display, on one line
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _looks_like_sse(head: bytes) -> bool:
    """Whether a body's first bytes could begin an event stream (used only on error paths)."""
    return head.removeprefix(b"\xef\xbb\xbf").startswith(_SSE_STARTS)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Each phase's limit in seconds (None: no limit), per call or per engine. Measured from
    the request start, except `idle_s` (the longest gap between two chunks of the body) and
    `connect_s` (one TCP connect; waiting for a free connection of the pool does not count)."""

    connect_s: float | None = 10.0
    first_byte_s: float | None = 120.0
    first_token_s: float | None = None
    idle_s: float | None = 120.0
    total_s: float | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter; `Retry-After` wins when the server sends it."""

    max_retries: int = 2
    base_s: float = 0.5
    cap_s: float = 20.0
    max_retry_after_s: float = 60.0


@dataclass(slots=True)
class StreamResult:
    """What `Engine.run` returns. `response` has the shape of the endpoint called: a
    Responses object for `/responses`, a `chat.completion` for `/chat/completions`.

    How the stream ended is told the same way for both wire formats: `status` is
    "completed" or "incomplete" (the output cap or a content filter stopped it: a result,
    not an error), `incomplete_reason` the Responses reason (`max_output_tokens`,
    `content_filter`) and `finish_reason` chat's (`stop`, `length`, `content_filter`, ...)."""

    text: str
    usage: Usage | None
    response: dict[str, Any]
    events: int  # number of events the stream delivered
    http_status: int
    request_id: str | None
    custom_id: str | None
    dialect: Dialect | None
    attempts: int
    started_ns: int
    first_byte_ns: int | None
    first_token_ns: int | None
    finished_ns: int
    token_times_ns: list[int] = field(default_factory=list)
    status: str = "completed"
    incomplete_reason: str | None = None
    finish_reason: str | None = None
    # Sent again on a fresh connection because a pooled one was dead on arrival (a server
    # that closes kept-alive connections): transparent, not a retry (see `attempts`).
    reconnects: int = 0
    first_text_ns: int | None = None  # the first visible text (after any reasoning/tool call)
    choices: list[Choice] = field(default_factory=list)  # every part of every choice

    @property
    def ttft_s(self) -> float | None:
        """Request start to the first token of any kind: text, reasoning, refusal or a tool
        call (what a user of a reasoning or tool-calling model waits for first)."""
        if self.first_token_ns is None:
            return None
        return (self.first_token_ns - self.started_ns) / 1e9

    @property
    def ttft_text_s(self) -> float | None:
        """Request start to the first visible text."""
        if self.first_text_ns is None:
            return None
        return (self.first_text_ns - self.started_ns) / 1e9

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The first choice's tool calls (id, name, arguments joined from their fragments)."""
        return self.choices[0].tool_calls if self.choices else []

    @property
    def reasoning(self) -> str | None:
        """The first choice's reasoning text, if the server streamed any."""
        return self.choices[0].reasoning if self.choices else None

    @property
    def refusal(self) -> str | None:
        return self.choices[0].refusal if self.choices else None

    @property
    def e2e_s(self) -> float:
        return (self.finished_ns - self.started_ns) / 1e9

    @property
    def itl_s(self) -> list[float]:
        """Every gap between consecutive tokens (of any kind)."""
        t = self.token_times_ns
        return [(b - a) / 1e9 for a, b in itertools.pairwise(t)]


# A chunk's arrival time and its events, flat (see `engine.events.Flat`).
Batch = tuple[int, Flat]
Item = Batch | BaseException | None


class BatchQueue:
    """The bounded asyncio queue between one reader and one consumer: items are batches.

    `asyncio.Queue` is built for many producers and consumers; with exactly one of each, its
    bookkeeping (waiter deques, loop checks, an unfinished-task counter) was about a fifth of
    the client's CPU on paced streams (one event per chunk). This is the same contract (a full
    queue makes `put` wait: backpressure) with one waiter slot per side.
    """

    __slots__ = ("_getter", "_items", "_loop", "_putter", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[Item] = collections.deque()
        self._loop = asyncio.get_running_loop()
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def put_nowait(self, item: Item) -> None:
        self._items.append(item)
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    async def put(self, item: Item) -> None:
        while len(self._items) >= self.maxsize:
            self._putter = self._loop.create_future()
            await self._putter
        self.put_nowait(item)

    async def get(self) -> Batch | None:
        """The next batch, None at a clean end; an exception put by the reader is raised."""
        items = self._items
        while not items:
            self._getter = self._loop.create_future()
            await self._getter
        putter = self._putter
        if putter is not None:
            self._putter = None
            if not putter.done():
                putter.set_result(None)
        item = items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item


class _Attempt:
    """One HTTP request and its reader task.

    The request is sent and its headers are read by the caller's own task (`open`), so the
    request leaves in the same loop iteration as the call; only then does the reader task start
    on the body. A task started first would send one loop iteration later, and on a busy loop
    (hundreds of streams) that iteration is milliseconds of TTFT that the server did not add."""

    __slots__ = (
        "blocked", "custom_id", "decoder", "engine", "first_byte_ns", "first_token_ns", "headers",
        "last_ns", "payload", "queue", "reader", "reconnects", "request_id", "resp", "reused",
        "started_ns", "status", "timeouts", "timer", "url",
    )

    def __init__(self, engine: Engine, url: str, payload: bytes, headers: Mapping[str, str],
                 custom_id: str | None, timeouts: Timeouts) -> None:
        self.engine = engine
        self.url = url
        self.payload = payload
        self.headers = headers
        self.custom_id = custom_id
        self.timeouts = timeouts
        self.queue = BatchQueue(engine.queue_size)
        self.decoder = EventDecoder()
        self.resp: aiohttp.ClientResponse | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.request_id: str | None = None
        self.started_ns = time.perf_counter_ns()
        self.first_byte_ns: int | None = None
        self.first_token_ns: int | None = None
        self.last_ns = self.started_ns
        self.blocked = False  # the reader waits on a full queue: not the server's idle time
        self.reader: asyncio.Task[None] | None = None
        self.reused = False  # set by the engine's trace hook: the pool handed out a kept-alive one
        self.reconnects = 0

    async def open(self) -> None:
        """Send the request and read its headers here, then start the reader on the body."""
        try:
            resp = await self._open()
        except EngineError as exc:
            if self.resp is not None:
                self.resp.release()  # an error status whose body was read: reuse the connection
            raise self._tag(exc) from None
        readers = self.engine._readers  # noqa: SLF001 - the engine owns its readers
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
        if self.resp is not None:
            self.resp.close()  # synchronous: the connector holds nothing afterwards

    # --- the reader task -------------------------------------------------------------------

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        try:
            self._arm()
            await self._pump(resp)
            self._disarm()
            resp.release()  # at EOF: the connection is back in the pool before the consumer ends
            await self.queue.put(_END)
        except asyncio.CancelledError:
            raise
        except EngineError as exc:
            self._tag(exc)
            await self.queue.put(exc)
        except aiohttp.ClientError as exc:  # a safety net: _open and _pump map their own
            await self.queue.put(self._tag(TransportError(
                f"connection broke: {self._describe(exc)}")))
        except Exception as exc:  # a bug, surfaced to the consumer rather than lost in a task
            await self.queue.put(exc)
        finally:
            self._disarm()
            if self.resp is not None:
                self.resp.release()

    async def _open(self) -> aiohttp.ClientResponse:
        t = self.timeouts
        limits = [s for s in (t.first_byte_s, t.total_s) if s is not None]
        error: EngineError
        try:
            async with asyncio.timeout(min(limits) if limits else None):
                resp = await self._send()
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                error = ConnectTimeout(f"connect to {self.url} timed out after {t.connect_s} s")
            else:
                first_byte = t.first_byte_s is not None and (
                    t.total_s is None or t.first_byte_s <= t.total_s)
                cls = FirstByteTimeout if first_byte else TotalTimeout
                error = cls(f"no response headers within {min(limits)} s")
        except aiohttp.ClientConnectorError as exc:
            error = TransportError(f"cannot connect to {self.url}: {self._describe(exc)}")
        except aiohttp.ClientError as exc:  # reset, closed, a malformed status line or header
            error = TransportError(f"no valid response from {self.url}: {self._describe(exc)}")
        else:
            return await self._check_response(resp)
        # Raised outside the handlers, so the aiohttp exception is neither cause nor context.
        raise error

    async def _send(self) -> aiohttp.ClientResponse:
        """POST the request; sent again at once when a kept-alive connection from the pool
        turns out dead before any response byte (the server closed it as we took it).

        Servers close kept-alive connections whenever they like: llama-server after every
        streamed response although it answered `Keep-Alive`, uvicorn after 5 s idle. The
        close can cross our next request on the wire; that request never reached a live
        server, so sending it again is not a retry and costs no attempt. Each dead connection
        is dropped from the pool, so this ends; a new connection that fails is a real error."""
        session = self.engine.session
        # Per request: a call's own `timeouts` must win over the engine's.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s)
        token = _SENDING.set(self)  # the pool tells us, through it, if it reused a connection
        try:
            while True:
                self.reused = False
                try:
                    return await session.post(self.url, data=self.payload,
                                              headers=self.headers, timeout=timeout)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if not self.reused or isinstance(exc, aiohttp.ClientConnectorError):
                        raise
                    self.reconnects += 1
                    self.engine.reconnects += 1
        finally:
            _SENDING.reset(token)

    async def _check_response(self, resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
        """Record the response's facts; raise for an error status or a body that is no stream."""
        self.resp = resp
        self.first_byte_ns = time.perf_counter_ns()
        self.status = resp.status
        self.request_id = resp.headers.get("x-request-id")
        if resp.status >= 300:
            raise await self._status_error(resp)
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith(("text/html", "application/json")):
            raise await self._not_a_stream(resp, ctype)
        return resp

    async def _pump(self, resp: aiohttp.ClientResponse) -> None:
        parser = self.decoder.parser(self.engine.max_event_bytes)
        decoder = self.decoder
        queue = self.queue
        clock = time.perf_counter_ns
        nbytes = 0
        head = b""  # the body's first bytes, for the error if it is not an event stream
        broke: str | None = None
        try:
            async for chunk in resp.content.iter_any():
                now = clock()
                if nbytes < SNIPPET_BYTES:
                    head += chunk[: SNIPPET_BYTES - nbytes]
                nbytes += len(chunk)
                messages = parser.feed(chunk)
                if not messages:
                    continue  # comments and partial events: idle time goes on
                self.last_ns = now
                events = decoder.scan(messages, now)
                if events:
                    if self.first_token_ns is None:
                        self._find_first_token(events, now)
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
            broke = self._describe(exc)
        parser.close()
        if (broke is None and decoder.dialect in (Dialect.CHAT, Dialect.COMPLETIONS)
                and decoder.finish_reason is not None):
            return  # a chat server that omits [DONE] after the last chunk
        if decoder.dialect is None and nbytes and not _looks_like_sse(head):
            raise ProtocolError(f"body is not an event stream (HTTP {self.status})",
                                raw=self._redact_bytes(head), status=self.status)
        how = "the body ended" if broke is None else f"the connection dropped ({broke})"
        raise StreamTruncated(
            f"{how} without a terminal event after {nbytes} bytes"
            + (" (an unfinished event was discarded)" if parser.partial_discarded else ""))

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

    def _find_first_token(self, events: Flat, received_ns: int) -> None:
        """Look for the first token of any kind (text, reasoning, a tool call); the events
        it built stay in the batch."""
        for i, ev in enumerate(events_of(events, received_ns)):
            events[3 * i: 3 * i + 3] = (ev, None, None)
            if ev.has_token:
                self.first_token_ns = received_ns
                return

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
            deadlines.append((self.started_ns + int(t.total_s * 1e9), TotalTimeout,
                              f"stream exceeded its total limit of {t.total_s} s"))
        if t.first_token_s is not None and self.first_token_ns is None:
            deadlines.append((self.started_ns + int(t.first_token_s * 1e9), FirstTokenTimeout,
                              f"no token within {t.first_token_s} s"))
        if t.idle_s is not None:
            start = now if self.blocked else self.last_ns
            deadlines.append((start + int(t.idle_s * 1e9), IdleTimeout,
                              f"no event for {t.idle_s} s"))
        when, cls, message = min(deadlines, key=lambda d: d[0])
        if when <= now and self.resp is not None:
            self.timer = None
            self.resp.content.set_exception(self._tag(cls(message)))
            return
        self.timer = asyncio.get_running_loop().call_later((when - now) / 1e9, self._check)

    # --- errors ----------------------------------------------------------------------------

    def _tag(self, exc: EngineError) -> EngineError:
        exc.request_id = exc.request_id or self.request_id
        exc.custom_id = exc.custom_id or self.custom_id
        if isinstance(exc, StreamError | ProtocolError) and exc.status is None and self.status:
            exc.status = self.status
        # An error event or a failed response may quote the request, credentials included:
        # the message, the event's data and the offending bytes are all shown or written.
        secrets = self._secrets()
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

    def _secrets(self) -> tuple[str, ...]:
        """The engine's credentials and those of this call's own headers."""
        own = secret_values(None, self.headers)
        if not own:
            return self.engine._secrets  # noqa: SLF001 - same module
        return tuple(sorted({*self.engine._secrets, *own}, key=len, reverse=True))  # noqa: SLF001

    def _describe(self, exc: BaseException) -> str:
        """`_describe` with this request's credentials redacted (a server may reflect them)."""
        return redact(_describe(exc), self._secrets())

    def _redact_bytes(self, raw: bytes) -> bytes:
        return redact_bytes(raw, self._secrets())

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The start of an error body, with any credential the server reflected redacted."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with asyncio.timeout(10):
                return self._redact_bytes(await resp.content.read(ERROR_BODY_LIMIT))
        return b""

    async def _status_error(self, resp: aiohttp.ClientResponse) -> APIStatusError:
        raw = await self._read_capped(resp)
        body: Any
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        message = _error_message(body)
        shown = message or (body[:SNIPPET_BYTES] if isinstance(body, str) else body)
        cls = status_error_class(resp.status)
        return cls(
            f"HTTP {resp.status}: {shown or resp.reason}",
            status=resp.status, body=body, request_id=self.request_id,
            custom_id=self.custom_id, retry_after_s=parse_retry_after(resp.headers),
            server_message=message,
        )

    async def _not_a_stream(self, resp: aiohttp.ClientResponse, ctype: str) -> EngineError:
        raw = await self._read_capped(resp)
        if ctype.startswith("application/json"):
            with contextlib.suppress(orjson.JSONDecodeError):
                body = orjson.loads(raw)
                err = body.get("error") if isinstance(body, dict) else None
                if err:  # a gateway's `{"error": ...}` with a success status
                    message = _error_message(body) or str(err)
                    code = err.get("code") if isinstance(err, dict) else None
                    return ErrorEvent(
                        f"server answered HTTP {resp.status} with an error object: {message}",
                        data=body, status=resp.status, server_message=message,
                        code=None if code is None else str(code))
        return ProtocolError(f"expected text/event-stream, got {ctype!r} (HTTP {resp.status})",
                             raw=raw, status=resp.status)


def _error_message(body: Any) -> str | None:
    """The `error.message` of an OpenAI-style error body, if it has one."""
    err = body.get("error") if isinstance(body, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return message if isinstance(message, str) else None


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
    elif not isinstance(exc, TransportError | ConnectTimeout | FirstByteTimeout
                        | IdleTimeout | FirstTokenTimeout | StreamTruncated):
        return None
    return backoff_delay(attempt, policy.base_s, policy.cap_s)


# The attempt whose request is being sent from this task (see `_Pool.connect`).
_SENDING: ContextVar[_Attempt | None] = ContextVar("stream_engine_sending", default=None)


class _Pool(aiohttp.TCPConnector):
    """The connection pool, telling the request being sent when it was handed a connection
    that served an earlier request (kept alive, so possibly closed by the server meanwhile).

    aiohttp's tracing says the same (`on_connection_reuseconn`), but a trace config makes
    aiohttp send a dozen signals per request: 3-10 % more client CPU per 20-token stream in
    two A/B runs here."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._served: weakref.WeakSet[object] = weakref.WeakSet()  # protocols seen before

    async def connect(self, req: aiohttp.ClientRequest, traces: list[Any],
                      timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
                      ) -> aiohttp.connector.Connection:
        conn = await super().connect(req, traces, timeout)
        protocol = conn.protocol
        if protocol is not None:
            if protocol in self._served:
                attempt = _SENDING.get()
                if attempt is not None:
                    attempt.reused = True
            else:
                self._served.add(protocol)
        return conn


class Engine:
    """Streams requests to an OpenAI-compatible endpoint over one pooled aiohttp session.

    `base_url` and `api_key` default to `OPENAI_BASE_URL` / `OPENAI_API_KEY`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        max_connections: int = 256,
        max_connections_per_host: int | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        queue_size: int = 64,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_response_chars: int = MAX_RESPONSE_CHARS,
        headers: Mapping[str, str] | None = None,
        keepalive_s: float = 30.0,
        on_retry: Callable[[EngineError, int], None] | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
                         ).rstrip("/")
        self.__api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if max_connections < 1:
            raise ConfigError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host or max_connections
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.queue_size = queue_size
        self.max_event_bytes = max_event_bytes
        self.max_response_chars = max_response_chars  # what `run` keeps of one answer
        self.keepalive_s = keepalive_s
        # Called with (error, attempt number) before each retry: rate limiters, counters.
        # An exception it raises cancels that retry and propagates to the caller (the batch
        # runner takes the retry over, to send it through its rate limits).
        self.on_retry = on_retry
        self._extra_headers = dict(headers or {})
        self._secrets = secret_values(self.__api_key, self._extra_headers)
        # The wait before a retry; tests replace it to see the delays without waiting them.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._session: aiohttp.ClientSession | None = None
        self._readers: dict[asyncio.Task[None], BatchQueue] = {}  # reader -> its consumer's queue
        self._active = 0
        self._closed = False
        self.reconnects = 0  # requests sent again on a fresh connection (see `_Attempt._send`)

    def __repr__(self) -> str:
        used = 0
        if self._session is not None:
            connector = self._session.connector
            used = len(getattr(connector, "_acquired", ()))
        queued = max(self._active - used, 0)
        return (f"<Engine {self.base_url} [streams: {self._active} active, {queued} queued | "
                f"pool: {used}/{self.max_connections}]>")

    async def __aenter__(self) -> Self:
        self._closed = False
        _ = self.session
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session, created on first use inside the running loop."""
        if self._closed:
            raise EngineClosed("the engine is closed")
        if self._session is None:
            connector = _Pool(
                limit=self.max_connections,
                limit_per_host=self.max_connections_per_host,
                keepalive_timeout=self.keepalive_s,
                ttl_dns_cache=300,
            )
            headers = {"Accept": "text/event-stream", "Content-Type": "application/json",
                       **self._extra_headers}
            if self.__api_key:
                headers["Authorization"] = f"Bearer {self.__api_key}"
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                # The phases are enforced by the engine; aiohttp's 300 s total must not apply.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s),
                auto_decompress=False,
            )
        return self._session

    @property
    def connections_in_use(self) -> int:
        """Connections currently checked out of the pool (0 when every stream released)."""
        if self._session is None:
            return 0
        return len(getattr(self._session.connector, "_acquired", ()))

    async def aclose(self) -> None:
        """Stop every reader, tell its consumer, and close the pool. A request still waiting
        for its headers fails with `EngineClosed` too (it is not retried)."""
        self._closed = True
        readers = dict(self._readers)
        for task in readers:
            task.cancel()
        if readers:
            await asyncio.gather(*readers, return_exceptions=True)
        for queue in readers.values():  # a consumer waiting on a cancelled reader must wake
            queue.put_nowait(EngineClosed("the engine was closed while the stream was read"))
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, body: Mapping[str, Any],
                endpoint: str | Dialect | None) -> tuple[str, Dialect]:
        """The URL and the response shape for a body (`messages` means chat)."""
        if endpoint is None:
            shape = (Dialect.CHAT if "messages" in body else Dialect.COMPLETIONS
                     if "prompt" in body and "input" not in body else Dialect.RESPONSES)
            return self.base_url + ENDPOINT_PATHS[shape], shape
        if endpoint in ENDPOINT_PATHS:
            shape = Dialect(endpoint)
            return self.base_url + ENDPOINT_PATHS[shape], shape
        path = str(endpoint)
        if not path.startswith("/"):
            raise ConfigError("endpoint must be 'responses', 'chat', 'completions' or a path, "
                              f"not {path!r}")
        shape = (Dialect.CHAT if path.endswith("/chat/completions") else Dialect.COMPLETIONS
                 if path.endswith("/completions") else Dialect.RESPONSES)
        return self.base_url + path, shape

    def _payload(self, body: Mapping[str, Any], shape: Dialect) -> bytes:
        if not isinstance(body, Mapping):
            raise ConfigError(f"request body must be a JSON object, not {type(body).__name__}")
        body = dict(body)
        body["stream"] = True
        if shape is not Dialect.RESPONSES and "stream_options" not in body:
            body["stream_options"] = {"include_usage": True}  # usage is part of every result
        return orjson.dumps(body)

    def retry_delay(self, exc: EngineError, attempt: int) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None when `exc` must not be
        retried (see `retry_delay`)."""
        return retry_delay(exc, attempt, self.retry)

    async def _batches(self, handle: _Handle) -> AsyncGenerator[Batch, None]:
        """Batches of one request's events, with retries before the first event."""
        while True:
            attempt = _Attempt(self, handle.url, handle.payload, handle.headers,
                               handle.custom_id, handle.timeouts)
            handle.attempt = attempt
            handle.attempts += 1
            try:
                await attempt.open()
                batch = await attempt.queue.get()
            except EngineError as caught:
                attempt.abort()
                handle.reconnects += attempt.reconnects
                exc = caught
                if self._closed and not isinstance(exc, EngineClosed):
                    exc = attempt._tag(EngineClosed(  # noqa: SLF001 - same module
                        f"the engine was closed while the request was in flight ({exc.kind})"))
                exc.attempts = handle.attempts
                delay = self.retry_delay(exc, handle.attempts - 1)
                if delay is None:
                    if handle.attempts > 1:  # say what the whole call took, not the last try
                        spent_s = (time.perf_counter_ns() - handle.started_ns) / 1e9
                        exc.message += (f" (gave up after {handle.attempts} attempts, "
                                        f"{spent_s:.1f} s)")
                        exc.args = (exc.message,)
                    raise exc from None
                if self.on_retry is not None:
                    self.on_retry(exc, handle.attempts)
                await self._sleep(delay)
                continue
            except BaseException:
                attempt.abort()
                raise
            handle.reconnects += attempt.reconnects
            try:
                while batch is not None:
                    handle.finished_ns = batch[0]  # e2e ends at arrival
                    yield batch
                    batch = await attempt.queue.get()
            finally:
                if attempt.reading:
                    attempt.abort()  # consumer left early or failed: drop the connection
            if not handle.finished_ns:  # no event at all (a bare [DONE]): the body's end
                handle.finished_ns = attempt.last_ns
            return

    def _handle(self, body: Mapping[str, Any], endpoint: str | Dialect | None,
                custom_id: str | None, headers: Mapping[str, str] | None,
                timeouts: Timeouts | None) -> _Handle:
        url, shape = self.url_for(body, endpoint)
        return _Handle(url, shape, self._payload(body, shape), dict(headers or {}), custom_id,
                       timeouts or self.timeouts)

    async def stream(
        self,
        body: Mapping[str, Any],
        *,
        endpoint: str | Dialect | None = None,
        custom_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Yield the events of one streamed request. A failure (error event, failed
        response, truncated stream) is raised after its event was yielded; an incomplete
        response is not a failure."""
        handle = self._handle(body, endpoint, custom_id, headers, timeouts)
        self._active += 1
        try:
            async with contextlib.aclosing(self._batches(handle)) as batches:
                async for received_ns, items in batches:
                    for event in events_of(items, received_ns):
                        yield event
            handle.raise_for_outcome()
        finally:
            self._active -= 1

    async def run(
        self,
        body: Mapping[str, Any],
        *,
        handlers: Iterable[Handler] = (),
        endpoint: str | Dialect | None = None,
        custom_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts | None = None,
    ) -> StreamResult:
        """Stream one request through `handlers` and return the assembled result."""
        handle = self._handle(body, endpoint, custom_id, headers, timeouts)
        assembler = ResponseAssembler(handle.shape, self.max_response_chars)
        bare = not handlers  # no handler of the caller's: no event per text delta
        sync, run_async = ([assembler], []) if bare else split_handlers([assembler, *handlers])
        count = 0
        self._active += 1
        try:
            async with contextlib.aclosing(self._batches(handle)) as batches:
                async for received_ns, items in batches:
                    count += len(items) // 3
                    if bare:
                        assembler.add_batch(items, received_ns)
                        continue
                    for event in events_of(items, received_ns):
                        for fn in sync:
                            fn(event)
                        for afn in run_async:
                            pending = afn(event)
                            if pending is not None:
                                await pending
            handle.raise_for_outcome()
        except EngineError as exc:  # e.g. a malformed event found by a handler's lazy decode
            exc.custom_id = exc.custom_id or custom_id
            exc.attempts = handle.attempts
            if handle.attempt is not None:
                handle.attempt._tag(exc)  # noqa: SLF001 - same module
            raise
        finally:
            self._active -= 1
        attempt = handle.attempt
        assert attempt is not None  # noqa: S101 - _batches ran at least once
        ending = assembler.ending
        return StreamResult(
            text=assembler.text, usage=assembler.usage, response=assembler.response(),
            events=count, http_status=attempt.status, request_id=attempt.request_id,
            custom_id=custom_id, dialect=attempt.decoder.dialect, attempts=handle.attempts,
            started_ns=attempt.started_ns, first_byte_ns=attempt.first_byte_ns,
            first_token_ns=attempt.first_token_ns, finished_ns=handle.finished_ns,
            token_times_ns=assembler.token_times_ns, status=ending.status,
            incomplete_reason=ending.incomplete_reason, finish_reason=ending.finish_reason,
            reconnects=handle.reconnects, first_text_ns=assembler.first_text_ns,
            choices=assembler.choices,
        )


@dataclass(slots=True)
class _Handle:
    """One logical request across its attempts."""

    url: str
    shape: Dialect
    payload: bytes
    headers: dict[str, str] = field(repr=False)  # may hold a credential (`api-key`)
    custom_id: str | None
    timeouts: Timeouts
    attempt: _Attempt | None = None
    attempts: int = 0
    reconnects: int = 0
    finished_ns: int = 0
    started_ns: int = field(default_factory=time.perf_counter_ns)

    def raise_for_outcome(self) -> None:
        """Turn a stream that ended with a failure event into its typed error."""
        attempt = self.attempt
        if attempt is None:
            return
        decoder = attempt.decoder
        terminal = decoder.terminal
        error = terminal.error() if terminal is not None else None
        if error is not None:
            raise attempt._tag(error)  # noqa: SLF001 - same module
        if terminal is None and decoder.finish_reason is None and attempt.first_token_ns is None:
            # `[DONE]` alone is no answer: nothing said, nothing finished (never a success)
            raise attempt._tag(StreamTruncated(  # noqa: SLF001 - same module
                "the stream ended ([DONE]) with no content and no terminal event"))
