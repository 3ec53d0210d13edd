"""Canned byte streams over HTTP: the same bytes to every client (the engine, the official SDK,
the CLI, a batch), as `tests/test_sdk_parity.py` compares them.

`CannedServer.url(stream)` registers a stream and returns a base URL that answers every POST
under it with those bytes (a float in the stream is a pause, in seconds). It serves from the
test's loop; the CLI, which runs its own, is run in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

import orjson
from aiohttp import web

DONE = b"data: [DONE]\n\n"
Stream = list[bytes | float]


def typed(*events: dict[str, Any]) -> bytes:
    """Responses events, each with its `event:` line (sequence numbers added)."""
    return b"".join(
        b"event: "
        + str(ev["type"]).encode()
        + b"\ndata: "
        + orjson.dumps({"sequence_number": seq, **ev})
        + b"\n\n"
        for seq, ev in enumerate(events)
    )


def data(*payloads: dict[str, Any]) -> bytes:
    """`data:`-only events, as chat streams send them."""
    return b"".join(b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads)


class CannedServer:
    """`async with CannedServer() as server: server.url(stream)`, on the running loop."""

    def __init__(self) -> None:
        self.port = 0
        self.streams: dict[str, Stream] = {}
        app = web.Application()
        app.router.add_route("POST", "/{name}/v1/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)

    def url(self, stream: bytes | Stream) -> str:
        name = f"s{len(self.streams)}"
        self.streams[name] = [stream] if isinstance(stream, bytes) else stream
        return f"http://127.0.0.1:{self.port}/{name}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-request-id": "req_canned"}
        )
        await resp.prepare(request)
        for piece in self.streams[request.match_info["name"]]:
            if isinstance(piece, float):
                await asyncio.sleep(piece)
            else:
                await resp.write(piece)
        await resp.write_eof()
        return resp

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
