"""stream-engine: an async streaming engine for OpenAI-compatible endpoints.

Importing the library never changes the event loop policy; the CLI chooses uvloop itself.
"""

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version

# `_compiled` first: it decides, before any hot module loads, whether the compiled build is used.
from engine import _compiled, errors
from engine.assembly import Choice, ToolCall
from engine.client import Engine, RetryPolicy, StreamResult, Timeouts
from engine.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ConflictError,
    ConnectError,
    ConnectTimeout,
    EngineClosed,
    EngineError,
    EngineTimeout,
    ErrorEvent,
    FirstByteTimeout,
    FirstTokenTimeout,
    IdleTimeout,
    InternalServerError,
    JobFailed,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ResponseFailed,
    StreamError,
    StreamTruncated,
    TotalTimeout,
    TransportError,
    UnprocessableEntityError,
)
from engine.events import Delta, Dialect, EventDecoder, StreamEvent, Usage
from engine.handlers import (
    Callback,
    Handler,
    JSONLWriter,
    ResponseAssembler,
    TextCollector,
    TimingRecorder,
)
from engine.sse import SSEMessage, SSEParser

try:
    __version__ = _version("stream-engine")
except _NotInstalled:  # pragma: no cover - running from a source tree not installed
    __version__ = "0.0.0"

COMPILED = _compiled.compiled()  # the hot path runs as C (mypyc); see engine/_compiled.py

__all__ = [
    "COMPILED",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "Callback",
    "Choice",
    "ConfigError",
    "ConflictError",
    "ConnectError",
    "ConnectTimeout",
    "Delta",
    "Dialect",
    "Engine",
    "EngineClosed",
    "EngineError",
    "EngineTimeout",
    "ErrorEvent",
    "EventDecoder",
    "FirstByteTimeout",
    "FirstTokenTimeout",
    "Handler",
    "IdleTimeout",
    "InternalServerError",
    "JSONLWriter",
    "JobFailed",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RateLimitError",
    "ResponseAssembler",
    "ResponseFailed",
    "RetryPolicy",
    "SSEMessage",
    "SSEParser",
    "StreamError",
    "StreamEvent",
    "StreamResult",
    "StreamTruncated",
    "TextCollector",
    "Timeouts",
    "TimingRecorder",
    "ToolCall",
    "TotalTimeout",
    "TransportError",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
    "errors",
]
