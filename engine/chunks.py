"""The queue between a stream's reader task and its consumer: one item per chunk read.

Each item is a chunk's arrival time and its events in the engine's flat layout (`engine._flat`)
(no object per event), an exception the reader met, or `END` at a clean end. A full queue
makes the reader wait, so it stops reading the socket: backpressure reaches the server.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Final

from engine._flat import Flat

__all__ = ["END", "Chunk", "ChunkQueue"]

END: Final = None  # the stream ended cleanly


# A chunk's arrival time and its events, flat (see `engine._flat`).
Chunk = tuple[int, Flat]
Item = Chunk | BaseException | None


class ChunkQueue:
    """The bounded queue between one reader and one consumer: one item per chunk.

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

    async def get(self) -> Chunk | None:
        """The next chunk's events, None at a clean end; the reader's exception is raised."""
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
