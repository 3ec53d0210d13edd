"""The transport: the pool, sending one request, and everything aiohttp says, mapped.

`Exchange.open` sends one POST and reads its response headers, from the caller's task, and
returns the response whose body is an event stream; anything else raises an `EngineError`:
no connection (`ConnectError`, `ConnectTimeout`), no valid response (`TransportError`), no
headers in time (`FirstByteTimeout`, `TotalTimeout`), an error status (`APIStatusError` and
its subclasses, with the server's message and `Retry-After`), or a body that is not a stream
(`ProtocolError`, or `ErrorEvent` for a gateway's JSON error object). Nothing aiohttp raises
passes here: each aiohttp exception is described by type and message (`describe`), never by
repr, and never chained (`raise ... from exc` would keep it as `__cause__`): the args and
repr of aiohttp's `ClientResponseError` hold the request headers, Authorization included.
Text a server may have reflected from the request is redacted as well (`engine.redaction`).

The exchange also stamps when the request got its connection (`sent_ns`: aiohttp writes the
request right after), how long it waited for a free one (`pool_wait_ns`) and what a new
connection cost (`connect_ns`): the load tester's figures, from the pool's own `connect`
rather than aiohttp's tracing (a trace config costs 3-10 % of client CPU per short request).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, cast

import aiohttp
import orjson
from aiohttp.client_proto import ResponseHandler

from engine.errors import (
    SNIPPET_BYTES,
    APIStatusError,
    ConnectError,
    ConnectTimeout,
    EngineError,
    ErrorEvent,
    FirstByteTimeout,
    ProtocolError,
    TotalTimeout,
    TransportError,
    status_error_class,
)
from engine.limits import parse_retry_after
from engine.redaction import redact, redact_bytes

if TYPE_CHECKING:
    from collections.abc import Mapping

    from engine.config import Timeouts

__all__ = ["Exchange", "Pool", "describe"]

ERROR_BODY_LIMIT: Final = 64 * 1024


def describe(exc: BaseException) -> str:
    """One line naming an aiohttp error: its type and message, never its repr or args."""
    # ClientResponseError's str() adds the URL and its repr/args the request headers; its
    # `message` (e.g. aiohttp's parser quoting a bad status line) is what the server did.
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    text = " ".join(str(text).split())  # the parser's multi-line caret display, on one line
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Exchange:
    """One HTTP request: sent, its response headers checked, its facts kept for errors."""

    __slots__ = (
        "connect_ns",
        "first_byte_ns",
        "headers",
        "payload",
        "pool_wait_ns",
        "reconnects",
        "request_id",
        "resp",
        "reused",
        "secrets",
        "sent_ns",
        "session",
        "started_ns",
        "status",
        "timeouts",
        "url",
    )

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        payload: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        secrets: tuple[str, ...],
    ) -> None:
        self.session = session
        self.url = url
        self.payload = payload
        self.headers = headers
        self.timeouts = timeouts
        self.secrets = secrets  # what must never be shown: redacted from every message
        self.resp: aiohttp.ClientResponse | None = None
        self.status = 0
        self.request_id: str | None = None
        self.started_ns = time.perf_counter_ns()
        self.first_byte_ns: int | None = None
        self.sent_ns = 0  # the connection in hand: aiohttp writes the request next
        self.pool_wait_ns = 0  # waiting for a free connection of the pool
        self.connect_ns = 0  # a new connection's connect (and TLS) time; 0 when reused
        self.reused = False  # set by the pool: it handed out a kept-alive connection
        self.reconnects = 0

    async def open(self) -> aiohttp.ClientResponse:
        """Send, read the headers, return the response of an event stream or raise."""
        try:
            return await self._open()
        except EngineError:
            if self.resp is not None:
                self.resp.release()  # an error status whose body was read: reuse the connection
            raise

    def close(self) -> None:
        """Drop the connection now, never reuse it (synchronous: the pool holds nothing)."""
        if self.resp is not None:
            self.resp.close()

    def describe(self, exc: BaseException) -> str:
        """`describe` with this request's credentials redacted (a server may reflect them)."""
        return redact(describe(exc), self.secrets)

    def redact_bytes(self, raw: bytes) -> bytes:
        return redact_bytes(raw, self.secrets)

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
                    t.total_s is None or t.first_byte_s <= t.total_s
                )
                cls = FirstByteTimeout if first_byte else TotalTimeout
                error = cls(f"no response headers within {min(limits)} s")
        except aiohttp.ClientConnectorError as exc:
            error = ConnectError(f"cannot connect to {self.url}: {self.describe(exc)}")
        except aiohttp.ClientError as exc:  # reset, closed, a malformed status line or header
            error = TransportError(f"no valid response from {self.url}: {self.describe(exc)}")
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
        # Per request: a call's own `timeouts` must win over the engine's.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s)
        token = _SENDING.set(self)  # the pool tells us, through it, what it handed out
        try:
            while True:
                self.reused = False
                try:
                    # Redirects are not followed (as openai-python does not): a POST sent on
                    # elsewhere may lose its body; the error names the new location instead.
                    return await self.session.post(
                        self.url,
                        data=self.payload,
                        headers=self.headers,
                        timeout=timeout,
                        allow_redirects=False,
                    )
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if not self.reused or isinstance(exc, aiohttp.ClientConnectorError):
                        raise
                    self.reconnects += 1
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

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The start of an error body, with any credential the server reflected redacted."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with asyncio.timeout(10):
                return self.redact_bytes(await resp.content.read(ERROR_BODY_LIMIT))
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
        location = resp.headers.get("Location")
        if 300 <= resp.status < 400 and location:
            shown = (
                f"{self.url} redirects to {redact(location, self.secrets)}; redirects are "
                "not followed: use the new location's base URL"
            )
        cls = status_error_class(resp.status)
        return cls(
            f"HTTP {resp.status}: {shown or resp.reason}",
            status=resp.status,
            body=body,
            request_id=self.request_id,
            retry_after_s=parse_retry_after(resp.headers),
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
                        data=body,
                        status=resp.status,
                        server_message=message,
                        code=None if code is None else str(code),
                    )
        return ProtocolError(
            f"expected text/event-stream, got {ctype!r} (HTTP {resp.status})",
            raw=raw,
            status=resp.status,
        )


def _error_message(body: Any) -> str | None:
    """The `error.message` of an OpenAI-style error body, if it has one."""
    err = body.get("error") if isinstance(body, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return message if isinstance(message, str) else None


# The exchange whose request is being sent from this task (see `Pool.connect`).
_SENDING: ContextVar[Exchange | None] = ContextVar("stream_engine_sending", default=None)


class _Protocol(ResponseHandler):
    """aiohttp's response protocol, telling the body's reader when the HTTP framing broke.

    When the C parser meets a malformed body (a bad chunk-size line, say), aiohttp closes the
    connection and records the error on the protocol, but the body's `StreamReader` is never
    told: `iter_any()` waits until the idle timeout (the pure-Python parser does tell it).
    Here the error reaches the reader at once, with either parser."""

    def set_exception(self, exc: BaseException, *cause: Any) -> None:
        payload = self._payload
        super().set_exception(exc, *cause)
        if payload is not None and payload.exception() is None and not payload.is_eof():
            payload.set_exception(exc)


class Pool(aiohttp.TCPConnector):
    """The connection pool, telling the request being sent what it was handed: a connection
    that served an earlier request (kept alive, so possibly closed by the server meanwhile)
    or a new one, and when.

    aiohttp's tracing says the same (`on_connection_reuseconn`, ...), but a trace config
    makes aiohttp send a dozen signals per request: 3-10 % more client CPU per 20-token
    stream in two A/B runs here."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = cast(
            "functools.partial[ResponseHandler]", functools.partial(_Protocol, loop=self._loop)
        )
        self._served: weakref.WeakSet[object] = weakref.WeakSet()  # protocols seen before

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> aiohttp.connector.Connection:
        asked_ns = time.perf_counter_ns()
        exchange = _SENDING.get()
        if exchange is not None:
            exchange.connect_ns = 0  # a resend after a dead kept-alive one starts afresh
        conn = await super().connect(req, traces, timeout)
        now = time.perf_counter_ns()
        protocol = conn.protocol
        reused = protocol is not None and protocol in self._served
        if protocol is not None and not reused:
            self._served.add(protocol)
        if exchange is not None:
            exchange.reused = reused
            exchange.sent_ns = now
            exchange.pool_wait_ns = now - asked_ns - exchange.connect_ns
        return conn

    async def _create_connection(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> ResponseHandler:
        """A new connection (TCP, TLS, a proxy's CONNECT): its time is `connect_ns`."""
        started_ns = time.perf_counter_ns()
        try:
            return await super()._create_connection(req, traces, timeout)
        finally:
            exchange = _SENDING.get()
            if exchange is not None:
                exchange.connect_ns = time.perf_counter_ns() - started_ns
