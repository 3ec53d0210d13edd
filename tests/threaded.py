"""A test server on 127.0.0.1 in a thread with its own event loop, for tests that run the
CLI in a subprocess or in-process with its own loop (a fixture's loop would not be running).

A subclass implements `_listen`: start listening, return the port and an async closer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Self

Closer = Callable[[], Awaitable[object]]
START_S = 10.0  # a server that is not listening by then failed to start


class ThreadedServer:
    """Start with `with`, which returns once it listens on `self.port`; stop on exit."""

    name = "the test server"

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _listen(self) -> tuple[int, Closer]:
        raise NotImplementedError

    async def _serve(self) -> None:
        self.port, close = await self._listen()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await close()

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(START_S):
            raise RuntimeError(f"{self.name} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_S)


async def stream_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    **kwargs: object,
) -> tuple[int, Closer]:
    """`asyncio.start_server` on 127.0.0.1:0, as `_listen` returns it."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]

    async def close() -> None:
        server.close()
        await server.wait_closed()

    return server.sockets[0].getsockname()[1], close
