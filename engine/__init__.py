"""stream-engine: an async streaming engine for OpenAI-compatible endpoints.

Importing the library never changes the event loop policy; the CLI chooses uvloop itself.
"""

from engine import errors
from engine.client import Engine, RetryPolicy, StreamResult, Timeouts
from engine.errors import EngineError
from engine.events import Dialect, EventDecoder, StreamEvent, Usage
from engine.handlers import (
    Callback,
    Handler,
    JSONLWriter,
    ResponseAssembler,
    TextCollector,
    TimingRecorder,
)
from engine.sse import SSEMessage, SSEParser

__all__ = [
    "Callback",
    "Dialect",
    "Engine",
    "EngineError",
    "EventDecoder",
    "Handler",
    "JSONLWriter",
    "ResponseAssembler",
    "RetryPolicy",
    "SSEMessage",
    "SSEParser",
    "StreamEvent",
    "StreamResult",
    "TextCollector",
    "Timeouts",
    "TimingRecorder",
    "Usage",
    "errors",
]
