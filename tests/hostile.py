"""A server that misbehaves on purpose, on 127.0.0.1, in a thread: one behaviour per URL prefix.

    with HostileServer() as server:
        url = server.url("drip")      # http://127.0.0.1:PORT/drip/v1, both API paths

Every behaviour is bounded (bytes and seconds), so a client that fails to stop still ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from tests.threaded import Closer, ThreadedServer

LIMIT_S = 60.0  # no behaviour lasts longer than this
CHUNK = 64 * 1024
Behaviour = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


async def _drip(request: web.Request, resp: web.StreamResponse) -> None:
    """Keep-alive comments every 50 ms, never an event."""
    for _ in range(int(LIMIT_S / 0.05)):
        await resp.write(b": ping\n\n")
        await asyncio.sleep(0.05)  # the server's pacing


async def _stall(request: web.Request, resp: web.StreamResponse) -> None:
    """Headers, then silence."""
    await asyncio.sleep(LIMIT_S)


async def _echo_key(request: web.Request, resp: web.StreamResponse) -> None:
    """The request's credentials, echoed in an error event (chat) or response.failed."""
    auth = request.headers.get("Authorization", "")
    if request.path.endswith("/chat/completions"):
        await resp.write(
            b"data: "
            + orjson.dumps({"error": {"message": f"invalid credentials: {auth}", "code": "auth"}})
            + b"\n\n"
        )
        await resp.write(b"data: [DONE]\n\n")
        return
    await resp.write(
        b"event: response.failed\ndata: "
        + orjson.dumps(
            {
                "type": "response.failed",
                "response": {
                    "status": "failed",
                    "error": {"message": f"upstream refused {auth}", "code": "auth"},
                },
            }
        )
        + b"\n\n"
    )


async def _endless_line(request: web.Request, resp: web.StreamResponse) -> None:
    """`data: xxxx…` with no line end, up to 1 GiB."""
    await resp.write(b"data: ")
    piece = b"x" * CHUNK
    for _ in range(1024 * 1024 * 1024 // CHUNK):
        await resp.write(piece)


async def _empty_flood(request: web.Request, resp: web.StreamResponse) -> None:
    """Empty `data:` lines and never a blank line: one event of newlines, up to 1 GiB."""
    piece = b"data:\n" * (CHUNK // 6)
    for _ in range(1024 * 1024 * 1024 // len(piece)):
        await resp.write(piece)


async def _huge(request: web.Request, resp: web.StreamResponse) -> None:
    """A well-formed chat stream of 2 GiB of text, then its end."""
    event = (
        b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":'
        b'{"content":"' + b"y" * 4000 + b'"}}]}\n\n'
    )
    piece = event * (CHUNK // len(event) + 1)
    for _ in range(2 * 1024 * 1024 * 1024 // len(piece)):
        await resp.write(piece)
    await resp.write(
        b'data: {"object":"chat.completion.chunk","choices":[{"index":0,'
        b'"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )


async def _tiny_deltas(request: web.Request, resp: web.StreamResponse) -> None:
    """A chat stream of 3-character deltas, N MiB of it (`tiny-deltas-N`; default 1,024), then
    its end: a flood of tiny fragments, each a small object if kept as it came."""
    event = (
        b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":'
        b'{"content":"abc"}}]}\n\n'
    )
    piece = event * (CHUNK // len(event))
    size = request.match_info["behaviour"].rpartition("-")[2]
    mib = int(size) if size.isdigit() else 1024
    for _ in range(mib * 1024 * 1024 // len(piece)):
        await resp.write(piece)
    await resp.write(
        b'data: {"object":"chat.completion.chunk","choices":[{"index":0,'
        b'"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )


async def _one_answer(request: web.Request, resp: web.StreamResponse) -> None:
    """A whole chat stream: one text chunk, a finish, [DONE]."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": []}
    for choice in (
        {"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "stop"},
    ):
        await resp.write(b"data: " + orjson.dumps({**chunk, "choices": [choice]}) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")


BEHAVIOURS: dict[str, Behaviour] = {
    "drip": _drip,
    "stall": _stall,
    "echo-key": _echo_key,
    "endless-line": _endless_line,
    "empty-flood": _empty_flood,
    "huge": _huge,
    "tiny-deltas": _tiny_deltas,
    "ok-then-401": _one_answer,  # then 401 (see _handle)
}


JOB_STATUSES = frozenset({"401", "403", "404"})


def _job_status(status: int) -> web.Response:
    """An OpenAI-shaped error for a status that is the job's fault, not the request's."""
    return web.json_response(
        {"error": {"message": f"refused ({status})", "code": str(status)}}, status=status
    )


async def _handle(request: web.Request, counts: dict[str, int]) -> web.StreamResponse:
    name = request.match_info["behaviour"]
    counts[name] = counts.get(name, 0) + 1
    if name in JOB_STATUSES:  # a wrong key, a missing permission, a wrong path
        return _job_status(int(name))
    if name == "ok-then-401" and counts[name] > 1:  # the key was revoked after one answer
        return _job_status(401)
    if name == "429":  # every answer asks the client to wait 2 s
        return web.json_response(
            {"error": {"message": "slow down", "code": "rate_limit"}},
            status=429,
            headers={"Retry-After": "2"},
        )
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    kind, _, size = name.rpartition("-")
    sized = size.isdigit() and kind in BEHAVIOURS and name not in BEHAVIOURS
    behaviour = BEHAVIOURS[kind if sized else name]  # `tiny-deltas-128`: 128 MiB
    with contextlib.suppress(ConnectionError):  # the client hung up: that is the point
        await behaviour(request, resp)
        await resp.write_eof()
    return resp


class HostileServer(ThreadedServer):
    """The behaviours above, served from a thread with its own loop."""

    name = "the hostile server"

    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[str, int] = {}

    def url(self, behaviour: str) -> str:
        return f"http://127.0.0.1:{self.port}/{behaviour}/v1"

    async def _listen(self) -> tuple[int, Closer]:
        app = web.Application()

        async def handle(request: web.Request) -> web.StreamResponse:
            return await _handle(request, self.requests)

        app.router.add_route("POST", "/{behaviour}/v1/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner.addresses[0][1], runner.cleanup
