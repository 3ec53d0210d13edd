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
    from collections.abc import Iterable, Iterator

__all__ = ["Flat", "built", "count", "flatten", "names", "put", "split", "triples"]

Flat = list[Any]
WIDTH = 3  # items per event: the one place that knows it


def triples(items: Flat) -> Iterator[tuple[Any, str | None, str | None]]:
    """A chunk's events as `(raw, name, id)`, or `(event, None, None)` when built."""
    it = iter(items)
    return zip(it, it, it, strict=True)


def count(items: Flat) -> int:
    """How many events a chunk holds."""
    return len(items) // WIDTH


def names(items: Flat) -> Flat:
    """Each event's name, in order (None for an event built already)."""
    return items[1::WIDTH]


def built(items: Flat, i: int) -> Any:
    """Event `i`'s first item: its raw data, or the event when it was built."""
    return items[WIDTH * i]


def put(items: Flat, i: int, event: object) -> None:
    """Replace event `i` by the event built from it."""
    items[WIDTH * i : WIDTH * i + WIDTH] = (event, None, None)


def split(items: Flat, i: int) -> tuple[Flat, Flat]:
    """The events before `i` and from `i` on."""
    return items[: WIDTH * i], items[WIDTH * i :]


def flatten(events: Iterable[tuple[Any, str | None, str | None]]) -> Flat:
    """`(raw, name, id)` triples (or `(event, None, None)`) laid out flat."""
    return [item for triple in events for item in triple]
