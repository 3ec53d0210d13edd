"""The engine's internal layout of one chunk's events: a flat list, three items per event.

`raw, name, id` as the parser produced them (`SSEParser(factory=None)`), or `event, None,
None` for an event the reader had to build (untyped JSON, a terminal event, the first token).
Bytes and strings waiting in the queue are no work for CPython's cyclic garbage collector,
while an object per event is counted, traversed and promoted by it; the consumer builds each
`StreamEvent` only as it hands it on. Nothing outside the engine sees this layout: the
public API hands out events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Flat", "triples"]

Flat = list[Any]


def triples(items: Flat) -> Iterator[tuple[Any, str | None, str | None]]:
    """A chunk's events as `(raw, name, id)`, or `(event, None, None)` when built."""
    it = iter(items)
    return zip(it, it, it, strict=True)
