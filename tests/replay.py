"""A small server that replays recorded real-server exchanges, wire-exact.

Each recording (`tests/real_servers/recordings/*.json`, written by `record.py`) holds the
response bytes exactly as a real server sent them (status line, headers, chunked framing, SSE)
as a list of reads stamped with their offset from the request. The replay writes the same
bytes with the same pauses (scaled by `speed`; 0 writes each read at once, read by read), and
closes the connection after the response when the real server did, whatever its headers said.
The request's path picks the recording; its body is read and ignored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import orjson

RECORDINGS = Path(__file__).resolve().parent / "real_servers" / "recordings"


@dataclass(frozen=True, slots=True)
class Recording:
    server: str
    endpoint: str
    path: str  # under the base URL, e.g. "/chat/completions"
    request: dict[str, Any]
    reads: list[tuple[float, bytes]]
    closed_after_response: bool

    @classmethod
    def load(cls, path: Path) -> Recording:
        doc = orjson.loads(path.read_bytes())
        return cls(
            doc["server"],
            doc["endpoint"],
            doc["path"],
            doc["request"],
            [(t, base64.b64decode(b)) for t, b in doc["reads"]],
            doc["closed_after_response"],
        )

    @property
    def wire(self) -> bytes:
        return b"".join(data for _, data in self.reads)

    @property
    def body(self) -> bytes:
        """The response body with the chunked framing removed (an oracle for the tests)."""
        _, _, rest = self.wire.partition(b"\r\n\r\n")
        out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2 :]
        return out


def recordings() -> list[Recording]:
    return [Recording.load(p) for p in sorted(RECORDINGS.glob("*.json"))]


class ReplayServer:
    """`async with ReplayServer([rec, ...]) as server:` serves them at `server.base_url`."""

    def __init__(self, recs: list[Recording], speed: float = 1.0) -> None:
        self.by_path = {"/v1" + rec.path: rec for rec in recs}
        self.speed = speed
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:  # keep-alive: one request after another on this connection
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                rec = self.by_path[path]
                self.requests += 1
                previous = 0.0
                for offset, data in rec.reads:
                    if self.speed:
                        await asyncio.sleep((offset - previous) * self.speed)
                    previous = offset
                    writer.write(data)
                    await writer.drain()
                if rec.closed_after_response:
                    break
        writer.close()
