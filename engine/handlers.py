"""Handlers: pluggable consumers of stream events.

A handler is any callable taking a `StreamEvent`. Sync callables are the fast path (no task,
no await per event); a handler may also be async, and is then awaited in order. Built-ins are
slotted callables that precompute in `__init__`, so the per-event work is a few attribute
reads.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import IO, Any, Protocol

import orjson

from engine.events import (
    CHAT_CHUNK,
    TEXT_DELTA,
    Dialect,
    Ending,
    Flat,
    StreamEvent,
    Usage,
    delta_text,
    triples,
)

__all__ = [
    "Callback",
    "Handler",
    "JSONLWriter",
    "ResponseAssembler",
    "TextCollector",
    "TimingRecorder",
    "split_handlers",
]


class Handler(Protocol):
    """Called once per event, in stream order. May return an awaitable."""

    def __call__(self, event: StreamEvent, /) -> Awaitable[None] | None: ...


SyncHandler = Callable[[StreamEvent], None]
AsyncHandler = Callable[[StreamEvent], Awaitable[None]]


def split_handlers(handlers: Iterable[Handler]) -> tuple[list[SyncHandler], list[AsyncHandler]]:
    """Decide once, not per event, which handlers must be awaited."""
    sync: list[SyncHandler] = []
    run_async: list[AsyncHandler] = []
    for handler in handlers:
        call = getattr(handler, "__call__", None)  # noqa: B004 - we want the bound method
        if (getattr(handler, "is_async", False) or inspect.iscoroutinefunction(handler)
                or inspect.iscoroutinefunction(call)):
            run_async.append(handler)  # type: ignore[arg-type]
        else:
            sync.append(handler)  # type: ignore[arg-type]
    return sync, run_async


class TextCollector:
    """Collects the text deltas of a stream (either dialect)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[str] = []

    def __call__(self, event: StreamEvent) -> None:
        delta = event.text_delta
        if delta:
            self.parts.append(delta)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class TimingRecorder:
    """Arrival time of every text delta: TTFT and every inter-token gap, in ns."""

    __slots__ = ("token_times_ns",)

    def __init__(self) -> None:
        self.token_times_ns: list[int] = []

    def __call__(self, event: StreamEvent) -> None:
        if event.text_delta:
            self.token_times_ns.append(event.received_ns)

    @property
    def first_token_ns(self) -> int | None:
        return self.token_times_ns[0] if self.token_times_ns else None

    def itl_ns(self) -> list[int]:
        """Every gap between consecutive text deltas (0 for deltas that arrived together)."""
        times = self.token_times_ns
        return [b - a for a, b in itertools.pairwise(times)]


class ResponseAssembler:
    """Builds the final response object of a stream, in the shape of the endpoint called.

    For `/responses` that is the Responses object: taken from `response.completed` (or
    failed/incomplete) when the server sends one, else assembled from the events (a gateway
    that answered with chat chunks, a stream cut before its end). For `/chat/completions` it
    is a `chat.completion` object assembled from the chunks.
    """

    __slots__ = ("created", "dialect", "finish_reason", "meta", "parts", "shape", "terminal",
                 "token_times_ns", "usage")

    def __init__(self, shape: Dialect = Dialect.RESPONSES) -> None:
        self.shape = shape
        self.parts: list[str] = []
        self.token_times_ns: list[int] = []  # arrival of each delta: TTFT and ITL for free
        self.usage: Usage | None = None
        self.created: dict[str, Any] | None = None  # response object of response.created
        self.terminal: dict[str, Any] | None = None
        self.meta: dict[str, Any] = {}  # id/model/created of chat chunks
        self.finish_reason: str | None = None
        self.dialect: Dialect | None = None

    def __call__(self, event: StreamEvent) -> None:
        delta = event.text_delta
        typ = event.type
        if delta:
            self.parts.append(delta)
            self.token_times_ns.append(event.received_ns)
            if typ != CHAT_CHUNK:
                return
            # A chat chunk may end the answer with its last token (vLLM sends finish_reason
            # beside the content; OpenAI in a chunk of its own), or carry usage with it.
        if typ == CHAT_CHUNK:
            self.dialect = Dialect.CHAT
            self._chat_chunk(event.data)
        elif typ.startswith("response."):
            self.dialect = Dialect.RESPONSES
            if typ == "response.created":
                self.created = event.response  # read now: a malformed one is a ProtocolError
            elif event.is_terminal:
                self.terminal = event.response
                self.usage = event.usage

    def _chat_chunk(self, data: dict[str, Any]) -> None:
        if not self.meta:
            self.meta = {k: data[k] for k in ("id", "model", "created") if k in data}
        usage = Usage.from_payload(data.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else ():  # odd shapes: no choices
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    def add_batch(self, items: Flat, received_ns: int) -> None:
        """A queued batch (see `engine.events.Flat`) as `__call__` would see its events, with
        no event built for a text delta: what `Engine.run` does when no other handler needs
        the events."""
        parts, times = self.parts, self.token_times_ns
        for raw, name, id_ in triples(items):
            if name == TEXT_DELTA:
                delta = delta_text(raw)
                if delta:  # a non-empty str (True is never returned)
                    parts.append(delta)  # type: ignore[arg-type]
                    times.append(received_ns)
                    continue
            self(raw if name is None else StreamEvent(raw, name, id_, received_ns))

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def ending(self) -> Ending:
        """How the stream ended: from chat's finish_reason, else the terminal response."""
        if self.terminal is None and (self.dialect is Dialect.CHAT or self.finish_reason):
            return Ending.from_finish(self.finish_reason)
        return Ending.from_response(self.terminal)

    def response(self) -> dict[str, Any]:
        """The final object: the server's terminal response, or assembled from the events."""
        if self.shape is Dialect.CHAT:
            return self._chat_completion()
        if self.terminal is not None:
            return self.terminal
        ending = self.ending
        status = ending.status
        base = dict(self.created or {})
        base.setdefault("id", self.meta.get("id", ""))
        base.setdefault("object", "response")
        base.setdefault("created_at", self.meta.get("created", int(time.time())))
        base.setdefault("model", self.meta.get("model", ""))
        base["status"] = status
        base["incomplete_details"] = (None if ending.incomplete_reason is None
                                      else {"reason": ending.incomplete_reason})
        base["output"] = [{
            "type": "message", "id": "", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": self.text, "annotations": []}],
        }]
        base["usage"] = self.usage.as_dict() if self.usage else None
        return base

    def _chat_completion(self) -> dict[str, Any]:
        meta = self.meta or {
            k: (self.terminal or self.created or {}).get(k2)
            for k, k2 in (("id", "id"), ("model", "model"), ("created", "created_at"))
        }
        usage = self.usage
        return {
            "id": meta.get("id"), "object": "chat.completion", "created": meta.get("created"),
            "model": meta.get("model"),
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": self.text},
                "finish_reason": self.ending.finish_reason or "stop", "logprobs": None,
            }],
            "usage": None if usage is None else {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.total_tokens,
            },
        }


class JSONLWriter:
    """Writes every event as one JSON line (`type`, `received_ns`, `data`) to a binary file."""

    __slots__ = ("file",)

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def __call__(self, event: StreamEvent) -> None:
        self.file.write(orjson.dumps(event.as_dict()) + b"\n")


class Callback:
    """Adapts a plain or async function, optionally only for some event types."""

    __slots__ = ("fn", "is_async", "types")

    def __init__(self, fn: Callable[[StreamEvent], Any],
                 types: Iterable[str] | None = None) -> None:
        self.fn = fn
        self.types = frozenset(types) if types is not None else None
        self.is_async = inspect.iscoroutinefunction(fn)

    def __call__(self, event: StreamEvent) -> Any:
        if self.types is None or event.type in self.types:
            return self.fn(event)
        return None
