"""The exception tree. Every error names the request it belongs to.

    EngineError
    ├── ConfigError (also ValueError)       the caller's fault: bad arguments, bad input line
    ├── EngineClosed                        the engine was closed with the request in flight
    ├── TransportError                      no response: refused, reset, a malformed status line
    │   └── ConnectError                    no connection at all: refused, DNS, unreachable, TLS
    ├── APIStatusError(status, body)        a non-2xx answer
    │   ├── BadRequestError (400)  AuthenticationError (401)  PermissionDeniedError (403)
    │   ├── NotFoundError (404)  ConflictError (409)  UnprocessableEntityError (422)
    │   ├── RateLimitError (429)  InternalServerError (5xx)
    ├── StreamError(status)                 the response began but did not succeed
    │   ├── ErrorEvent                      `error` event / chat `{"error": …}` chunk / JSON body
    │   ├── ResponseFailed                  `response.failed`
    │   └── StreamTruncated                 the body ended (cleanly or by a dropped connection)
    │                                       without a terminal event
    ├── ProtocolError                       not SSE, bad JSON, event over the size cap
    ├── EngineTimeout (also TimeoutError)
    │   ├── ConnectTimeout  FirstByteTimeout  FirstTokenTimeout  IdleTimeout  TotalTimeout
    └── JobFailed                           the job, not one request, cannot go on (a wrong
                                            key, path or host): batch and bench stop on it

A request identifier (`request_id`: the server's `x-request-id`; `custom_id`: the caller's
label) rides on every error so a failure among thousands can be traced; `APIStatusError`,
`StreamError` and `ProtocolError` also carry the HTTP `status` and, where the server gave
one, its `server_message`. The API key never appears in any message, args or traceback:
errors hold bodies and ids, never request headers, and no aiohttp exception is chained to
them (aiohttp's `ClientResponseError` holds the request headers).
"""

from __future__ import annotations

from typing import Any

SNIPPET_BYTES = 200


def snippet(raw: bytes | str, limit: int = SNIPPET_BYTES) -> str:
    """A short `!r` view of offending bytes, for error messages."""
    if len(raw) <= limit:
        return repr(raw)
    return f"{raw[:limit]!r}… ({len(raw)} bytes)"


class EngineError(Exception):
    """Base of every error the engine raises."""

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        custom_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.custom_id = custom_id
        self.attempts = 1  # how many HTTP requests the engine made before giving up

    @property
    def kind(self) -> str:
        """A short stable label for counting errors by kind (reports, batch error files)."""
        return type(self).__name__

    def __str__(self) -> str:
        where = [
            f"{k}={v}"
            for k, v in (("custom_id", self.custom_id), ("request_id", self.request_id))
            if v
        ]
        return f"{self.message} [{', '.join(where)}]" if where else self.message


class ConfigError(EngineError, ValueError):
    """The caller's fault: an invalid argument, body or input line."""


class EngineClosed(EngineError):
    """The engine was closed (`aclose`, the end of `async with`) while this request was in
    flight, or a request was made after it. Never retried."""


class TransportError(EngineError):
    """No usable response: the connection was refused or reset, or the status line and
    headers could not be read. A body cut after the headers is `StreamTruncated`."""


class ConnectError(TransportError):
    """No connection could be made (refused, DNS failure, unreachable, TLS handshake): no
    request reached the server."""


class APIStatusError(EngineError):
    """The server answered with a non-2xx status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: Any = None,
        request_id: str | None = None,
        custom_id: str | None = None,
        retry_after_s: float | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id, custom_id=custom_id)
        self.status = status
        self.body = body
        self.retry_after_s = retry_after_s
        self.server_message = server_message

    @property
    def kind(self) -> str:
        return f"http_{self.status}"

    @property
    def status_code(self) -> int:
        """The HTTP status, by openai-python's name for it (`status` is the same)."""
        return self.status


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status: int) -> type[APIStatusError]:
    """The most specific `APIStatusError` subclass for an HTTP status."""
    if status >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status, APIStatusError)


class StreamError(EngineError):
    """The response began (HTTP `status`, usually 200) but did not succeed; `data` is the
    server's event payload or error body, `server_message` its message, if any."""

    def __init__(
        self,
        message: str,
        *,
        data: Any = None,
        code: str | None = None,
        status: int | None = None,
        server_message: str | None = None,
        request_id: str | None = None,
        custom_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id, custom_id=custom_id)
        self.data = data
        self.code = code
        self.status = status
        self.server_message = server_message


class ErrorEvent(StreamError):
    pass


class ResponseFailed(StreamError):
    pass


class StreamTruncated(StreamError):
    pass


class ProtocolError(EngineError):
    """The bytes are not a valid event stream (or not the JSON they should be)."""

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        raw: bytes | str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        custom_id: str | None = None,
    ) -> None:
        if offset is not None:
            message = f"{message} at byte offset {offset}"
        if raw is not None:
            message = f"{message}: {snippet(raw)}"
        super().__init__(message, request_id=request_id, custom_id=custom_id)
        self.offset = offset
        self.raw = raw[:SNIPPET_BYTES] if raw is not None else None
        self.status = status


class EngineTimeout(EngineError, TimeoutError):
    """A phase of the request took longer than its configured limit."""


class ConnectTimeout(EngineTimeout):
    pass


class FirstByteTimeout(EngineTimeout):
    pass


class FirstTokenTimeout(EngineTimeout):
    pass


class IdleTimeout(EngineTimeout):
    pass


class TotalTimeout(EngineTimeout):
    pass


class JobFailed(EngineError):
    """A failure of the job rather than of one request: every request would meet it (a wrong
    key, path or host). Batch and bench stop on it, write no record for it and exit 2; the
    records it held stay to do. `cause` is the request's error that showed it."""

    def __init__(self, message: str, *, cause: EngineError | None = None) -> None:
        super().__init__(message)
        self.cause = cause
