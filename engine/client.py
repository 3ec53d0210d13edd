"""`Engine`: the connection pool, request building, retries and the stream lifecycle.

Per stream, the request is sent from the caller's task and a reader task reads the body
(`engine.attempt`), stamping each chunk as it arrives and putting its events, flat, on a
bounded queue (`engine.chunks`). The consumer (`stream()` / `run()`) takes them off the queue
and calls the handlers, so a slow handler never distorts arrival times, and a full queue stops
the reader, which stops reading the socket: backpressure reaches the server through TCP.
Failures before the first event are sent again by the rule of `engine.retry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self

import aiohttp
import orjson

from engine import _flat
from engine.assembly import MAX_RESPONSE_CHARS, ResponseAssembler
from engine.attempt import Attempt
from engine.config import DEFAULT_BASE_URL, RetryPolicy, Timeouts, env_api_key, env_base_url
from engine.errors import ConfigError, EngineClosed, EngineError, StreamTruncated
from engine.events import Dialect, StreamEvent, events_of
from engine.handlers import Handler, split_handlers
from engine.network import SSLOption, env_proxy, pool_ssl
from engine.redaction import secret_values, url_credentials
from engine.result import StreamResult
from engine.retry import error_event_delay, gave_up, mid_stream_delay, retry_delay
from engine.sse import MAX_EVENT_BYTES
from engine.transport import Exchange, Pool

if TYPE_CHECKING:
    from engine.chunks import Chunk, ChunkQueue

__all__ = ["DEFAULT_BASE_URL", "Engine", "RetryPolicy", "StreamResult", "Timeouts"]

# Awaited before each retry with (the error, the attempts so far): see `Engine.before_retry`.
RetryHook = Callable[[EngineError, int], Awaitable[None]]
# Called once an attempt's response headers are in with a success status (see `Engine.run`).
OpenHook = Callable[[], object]
ENDPOINT_PATHS: Final = {
    Dialect.RESPONSES: "/responses",
    Dialect.CHAT: "/chat/completions",
    Dialect.COMPLETIONS: "/completions",
}


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
        before_retry: RetryHook | None = None,
        proxy: str | None = None,
        trust_env: bool = True,
        ssl: SSLOption = None,
    ) -> None:
        self.base_url = (base_url or env_base_url() or DEFAULT_BASE_URL).rstrip("/")
        self.__api_key = api_key if api_key is not None else env_api_key()
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
        # Awaited with (error, attempts so far) after the backoff, just before each retry is
        # sent: where a caller takes a rate-limit grant or counts retries. An exception it
        # raises ends the call. A call's own `before_retry` replaces it.
        self.before_retry = before_retry
        self._extra_headers = dict(headers or {})
        # `proxy` wins; else, with `trust_env`, HTTP(S)_PROXY / NO_PROXY as curl and
        # openai-python read them, once (`env_proxy`). A proxy's password is a secret.
        self.trust_env = trust_env
        self.proxy = proxy if proxy is not None or not trust_env else env_proxy(self.base_url)
        self._ssl = pool_ssl(ssl)
        self._secrets = secret_values(
            self.__api_key, self._extra_headers, extra=url_credentials(self.proxy)
        )
        # The wait before a retry; tests replace it to see the delays without waiting them.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._session: aiohttp.ClientSession | None = None
        self._readers: dict[asyncio.Task[None], ChunkQueue] = {}  # reader -> its consumer's queue
        self._active = 0
        self._closed = False
        self.reconnects = 0  # requests sent again on a fresh connection (see `Attempt._send`)

    def __repr__(self) -> str:
        used = 0
        if self._session is not None:
            connector = self._session.connector
            used = len(getattr(connector, "_acquired", ()))
        queued = max(self._active - used, 0)
        return (
            f"<Engine {self.base_url} [streams: {self._active} active, {queued} queued | "
            f"pool: {used}/{self.max_connections}]>"
        )

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
            connector = Pool(
                limit=self.max_connections,
                limit_per_host=self.max_connections_per_host,
                keepalive_timeout=self.keepalive_s,
                ttl_dns_cache=300,
                ssl=self._ssl,
            )
            headers = {
                "Accept": "text/event-stream",
                # Small events gain little from compression and cost CPU to inflate; a server
                # that compresses anyway is still read (engine/content_encoding.py).
                "Accept-Encoding": "identity",
                "Content-Type": "application/json",
                **self._extra_headers,
            }
            if self.__api_key:
                headers["Authorization"] = f"Bearer {self.__api_key}"
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                # The phases are enforced by the engine; aiohttp's 300 s total must not apply.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s),
                auto_decompress=False,
                proxy=self.proxy,
                trust_env=False,  # the environment was read once, above (see `env_proxy`)
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

    def url_for(
        self, body: Mapping[str, Any], endpoint: str | Dialect | None
    ) -> tuple[str, Dialect]:
        """The URL and the response shape for a body (`messages` means chat)."""
        if endpoint is None:
            shape = (
                Dialect.CHAT
                if "messages" in body
                else Dialect.COMPLETIONS
                if "prompt" in body and "input" not in body
                else Dialect.RESPONSES
            )
            return self.base_url + ENDPOINT_PATHS[shape], shape
        if endpoint in ENDPOINT_PATHS:
            shape = Dialect(endpoint)
            return self.base_url + ENDPOINT_PATHS[shape], shape
        path = str(endpoint)
        if not path.startswith("/"):
            raise ConfigError(
                f"endpoint must be 'responses', 'chat', 'completions' or a path, not {path!r}"
            )
        shape = (
            Dialect.CHAT
            if path.endswith("/chat/completions")
            else Dialect.COMPLETIONS
            if path.endswith("/completions")
            else Dialect.RESPONSES
        )
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

    async def _before_retry(self, handle: _Handle, exc: EngineError, delay: float) -> None:
        await self._sleep(delay)
        hook = handle.before_retry or self.before_retry
        if hook is not None:
            await hook(exc, handle.attempts)

    def _attempt(self, handle: _Handle) -> Attempt:
        exchange = Exchange(
            self.session,
            handle.url,
            handle.payload,
            handle.headers,
            handle.timeouts,
            handle.secrets,
        )
        return Attempt(
            exchange,
            handle.custom_id,
            queue_size=self.queue_size,
            max_event_bytes=self.max_event_bytes,
            readers=self._readers,
        )

    @staticmethod
    def _outgoing(exc: EngineError, handle: _Handle, *, final: bool = False) -> EngineError:
        """The one place an error is finished on its way out of the engine, to a retry hook or
        (`final`) to the caller: it names its request and HTTP status, its credentials are
        redacted, its attempts counted, and a final one says what the retries took."""
        if handle.attempt is not None:
            handle.attempt.tag(exc)
        exc.custom_id = exc.custom_id or handle.custom_id
        exc.attempts = handle.attempts
        return gave_up(exc, handle.attempts, handle.started_ns) if final else exc

    async def _chunks(self, handle: _Handle) -> AsyncGenerator[Chunk, None]:
        """One request's chunks of events, with retries before the first event."""
        handle.finished_ns = 0
        while True:
            attempt = handle.attempt = self._attempt(handle)
            handle.attempts += 1
            try:
                await attempt.open()
                if handle.on_open is not None:
                    handle.on_open()
                chunk = await attempt.queue.get()
            except EngineError as caught:
                attempt.abort()
                self._count_reconnects(handle, attempt)
                exc = caught
                if self._closed and not isinstance(exc, EngineClosed):
                    exc = EngineClosed(
                        f"the engine was closed while the request was in flight ({exc.kind})"
                    )
                delay = self.retry_delay(exc, handle.attempts - 1)
                if delay is None:
                    raise exc from None
                await self._before_retry(handle, self._outgoing(exc, handle), delay)
                continue
            except BaseException:
                attempt.abort()
                raise
            self._count_reconnects(handle, attempt)
            try:
                while chunk is not None:
                    handle.finished_ns = chunk[0]  # e2e ends at arrival
                    yield chunk
                    chunk = await attempt.queue.get()
            finally:
                if attempt.reading:
                    attempt.abort()  # consumer left early or failed: drop the connection
            if not handle.finished_ns:  # no event at all (a bare [DONE]): the body's end
                handle.finished_ns = attempt.last_ns
            return

    def _count_reconnects(self, handle: _Handle, attempt: Attempt) -> None:
        reconnects = attempt.exchange.reconnects
        handle.reconnects += reconnects
        self.reconnects += reconnects

    def _handle(
        self,
        body: Mapping[str, Any],
        endpoint: str | Dialect | None,
        custom_id: str | None,
        headers: Mapping[str, str] | None,
        timeouts: Timeouts | None,
        before_retry: RetryHook | None,
        on_open: OpenHook | None = None,
    ) -> _Handle:
        url, shape = self.url_for(body, endpoint)
        own = secret_values(None, headers or {})  # a call's own credentials, redacted too
        secrets = (
            tuple(sorted({*self._secrets, *own}, key=len, reverse=True)) if own else self._secrets
        )
        return _Handle(
            url,
            shape,
            self._payload(body, shape),
            dict(headers or {}),
            custom_id,
            timeouts or self.timeouts,
            secrets,
            before_retry,
            on_open,
        )

    async def stream(
        self,
        body: Mapping[str, Any],
        *,
        endpoint: str | Dialect | None = None,
        custom_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts | None = None,
        before_retry: RetryHook | None = None,
        on_open: OpenHook | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Yield the events of one streamed request. A failure (error event, failed
        response, truncated stream) is raised after its event was yielded; an incomplete
        response is not a failure."""
        handle = self._handle(body, endpoint, custom_id, headers, timeouts, before_retry, on_open)
        self._active += 1
        try:
            async with contextlib.aclosing(self._chunks(handle)) as chunks:
                async for received_ns, items in chunks:
                    for event in events_of(items, received_ns):
                        yield event
            handle.raise_for_outcome()
        except EngineError as exc:
            raise self._outgoing(exc, handle, final=True) from None
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
        before_retry: RetryHook | None = None,
        on_open: OpenHook | None = None,
    ) -> StreamResult:
        """Stream one request through `handlers` and return the assembled result.

        With no handlers of the caller's, nothing of the stream reaches the caller before
        it is whole, so under `RetryPolicy(mid_stream=True)` a stream broken after its first
        event is sent again too (see `engine.retry`). `on_open` is called when an attempt's
        headers are in with a success status: a job's pre-flight waits on it before sending
        the rest."""
        handle = self._handle(body, endpoint, custom_id, headers, timeouts, before_retry, on_open)
        bare = not handlers
        self._active += 1
        try:
            while True:
                assembler = ResponseAssembler(handle.shape, self.max_response_chars)
                try:
                    count = await self._consume(handle, assembler, handlers)
                    handle.raise_for_outcome()
                except EngineError as exc:  # e.g. a malformed event found by a lazy decode
                    delay = self._run_retry_delay(exc, handle) if bare else None
                    if delay is None:
                        raise self._outgoing(exc, handle, final=True) from None
                    await self._before_retry(handle, self._outgoing(exc, handle), delay)
                    continue
                break
        finally:
            self._active -= 1
        attempt = handle.attempt
        assert attempt is not None  # noqa: S101 - _chunks ran at least once
        ending = assembler.ending
        choices = assembler.choices  # joined once: the text, the response and the choices
        return StreamResult(
            text=choices[0].text,
            usage=assembler.usage,
            response=assembler.response(choices),
            events=count,
            http_status=attempt.exchange.status,
            request_id=attempt.exchange.request_id,
            custom_id=custom_id,
            dialect=attempt.decoder.dialect,
            attempts=handle.attempts,
            started_ns=attempt.started_ns,
            first_byte_ns=attempt.exchange.first_byte_ns,
            first_token_ns=attempt.first_token_ns,
            finished_ns=handle.finished_ns,
            token_times_ns=assembler.token_times_ns,
            status=ending.status,
            incomplete_reason=ending.incomplete_reason,
            finish_reason=ending.finish_reason,
            reconnects=handle.reconnects,
            first_text_ns=assembler.first_text_ns,
            sent_ns=attempt.exchange.sent_ns,
            pool_wait_ns=attempt.exchange.pool_wait_ns,
            connect_ns=attempt.exchange.connect_ns,
            choices=choices,
        )

    def _run_retry_delay(self, exc: EngineError, handle: _Handle) -> float | None:
        """A bare `run` (nothing reached the caller) sends a stream again that broke mid-way
        (under `RetryPolicy(mid_stream=True)`), or that ended in a passing error event before
        its first token (a gateway's 502 chunk): the usual rule for a failure before the
        answer began."""
        attempts = handle.attempts - 1
        delay = mid_stream_delay(exc, attempts, self.retry)
        tokenless = handle.attempt is not None and handle.attempt.first_token_ns is None
        if delay is None and tokenless:
            delay = error_event_delay(exc, attempts, self.retry)
        return delay

    async def _consume(
        self, handle: _Handle, assembler: ResponseAssembler, handlers: Iterable[Handler]
    ) -> int:
        """One attempt's events through the handlers; returns how many there were."""
        bare = not handlers  # no handler of the caller's: no event per text delta
        sync, run_async = ([assembler], []) if bare else split_handlers([assembler, *handlers])
        count = 0
        async with contextlib.aclosing(self._chunks(handle)) as chunks:
            async for received_ns, items in chunks:
                count += _flat.count(items)
                if bare:
                    assembler.add_chunk(items, received_ns)
                    continue
                for event in events_of(items, received_ns):
                    for fn in sync:
                        fn(event)
                    for afn in run_async:
                        pending = afn(event)
                        if pending is not None:
                            await pending
        return count


@dataclass(slots=True)
class _Handle:
    """One logical request across its attempts."""

    url: str
    shape: Dialect
    payload: bytes
    headers: dict[str, str] = field(repr=False)  # may hold a credential (`api-key`)
    custom_id: str | None
    timeouts: Timeouts
    secrets: tuple[str, ...] = field(repr=False)  # redacted from whatever it raises
    before_retry: RetryHook | None = None
    on_open: OpenHook | None = None
    attempt: Attempt | None = None
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
            raise error
        if terminal is None and decoder.finish_reason is None and attempt.first_token_ns is None:
            # `[DONE]` alone is no answer: nothing said, nothing finished (never a success)
            raise StreamTruncated("the stream ended ([DONE]) with no content and no terminal event")
