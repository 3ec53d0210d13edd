"""Handlers: pluggable consumers of stream events.

A handler is any callable taking a `StreamEvent`. Sync callables are the fast path (no task,
no await per event); a handler may also be async, and is then awaited in order. Built-ins are
slotted callables that precompute in `__init__`, so the per-event work is a few attribute
reads.
"""

from __future__ import annotations

import inspect
import itertools
from array import array
from collections.abc import Awaitable, Callable, Iterable
from typing import IO, Any, Protocol

import orjson

from engine.assembly import Pieces, ResponseAssembler
from engine.events import StreamEvent

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
        if (
            getattr(handler, "is_async", False)
            or inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(call)
        ):
            run_async.append(handler)  # type: ignore[arg-type]
        else:
            sync.append(handler)  # type: ignore[arg-type]
    return sync, run_async


class TextCollector:
    """Collects the text deltas of a stream (either dialect), compactly (`Pieces`)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts = Pieces()

    def __call__(self, event: StreamEvent) -> None:
        delta = event.text_delta
        if delta:
            self.parts.append(delta)

    @property
    def text(self) -> str:
        return self.parts.join()


class TimingRecorder:
    """Arrival time of every event that carries a token of any kind (text, reasoning, tool
    call, refusal): TTFT and every inter-token gap, in ns."""

    __slots__ = ("token_times_ns",)

    def __init__(self) -> None:
        self.token_times_ns = array("q")  # 8 bytes a token

    def __call__(self, event: StreamEvent) -> None:
        if event.has_token:
            self.token_times_ns.append(event.received_ns)

    @property
    def first_token_ns(self) -> int | None:
        return self.token_times_ns[0] if self.token_times_ns else None

    def itl_ns(self) -> list[int]:
        """Every gap between consecutive tokens (0 for tokens that arrived together)."""
        times = self.token_times_ns
        return [b - a for a, b in itertools.pairwise(times)]


class JSONLWriter:
    """Writes every event as one JSON line (`type`, `received_ns`, `data`) to a binary file."""

    __slots__ = ("file",)

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def __call__(self, event: StreamEvent) -> None:
        self.file.write(orjson.dumps(event.as_dict()) + b"\n")


class Callback:
    """Adapts a plain or async function, optionally only for some event types, or only for
    events that carry some kinds of delta (`kinds={"tool_call"}`, `{"reasoning"}`: see
    `engine.events.Delta`), whatever the wire format."""

    __slots__ = ("fn", "is_async", "kinds", "types")

    def __init__(
        self,
        fn: Callable[[StreamEvent], Any],
        types: Iterable[str] | None = None,
        kinds: Iterable[str] | None = None,
    ) -> None:
        self.fn = fn
        self.types = frozenset(types) if types is not None else None
        self.kinds = frozenset(kinds) if kinds is not None else None
        self.is_async = inspect.iscoroutinefunction(fn)

    def __reduce__(self) -> tuple[type[Callback], tuple[Any, ...]]:
        # By its arguments: compiled (mypyc), the default would call the class with none.
        return (Callback, (self.fn, self.types, self.kinds))

    def __call__(self, event: StreamEvent) -> Any:
        if self.types is not None and event.type not in self.types:
            return None
        if self.kinds is not None and not any(d.kind in self.kinds for d in event.deltas):
            return None
        return self.fn(event)
