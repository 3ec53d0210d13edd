"""What sits between users and endpoints, on 127.0.0.1, in a thread: a forward HTTP proxy
(optionally asking for credentials) and a TLS terminator, each piping to a target port.

    with Front.proxy(target_port=mock_port, auth="user:s3cret") as proxy:
        proxy.url      # http://user:s3cret@127.0.0.1:PORT
        proxy.served   # requests it forwarded
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tests.threaded import Closer, ThreadedServer, stream_server

if TYPE_CHECKING:
    import ssl

LIMIT_S = 60.0  # a piped connection lasts at most this long


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        writer.close()


async def _splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter], port: int, head: bytes = b""
) -> None:
    """Connect to 127.0.0.1:port, send `head`, then copy both ways until either side ends.
    Both sockets are closed however it ends: the front stopping cancels a splice still
    piping, and a socket left to the collector is a ResourceWarning in some later test."""
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = client
    try:
        up_writer.write(head)
        async with asyncio.timeout(LIMIT_S):
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for end in (up_writer, writer):
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                end.close()


class Front(ThreadedServer):
    """A proxy or TLS front served from a thread with its own loop."""

    name = "the front"

    def __init__(
        self,
        target_port: int = 0,
        *,
        proxy: bool = False,
        auth: str | None = None,
        server_ssl: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self.target_port = target_port
        self.is_proxy = proxy
        self.auth = auth
        self.server_ssl = server_ssl
        self.served = 0  # requests forwarded (proxy) or connections piped (TLS)
        self.refused = 0  # proxy: requests without the right credentials (407)

    @classmethod
    def proxy(cls, *, auth: str | None = None) -> Front:
        return cls(proxy=True, auth=auth)

    @classmethod
    def tls(cls, target_port: int, server_ssl: ssl.SSLContext) -> Front:
        return cls(target_port, server_ssl=server_ssl)

    @property
    def url(self) -> str:
        scheme = "https" if self.server_ssl is not None else "http"
        creds = f"{self.auth}@" if self.auth else ""
        return f"{scheme}://{creds}127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                if not self.is_proxy:
                    self.served += 1
                    await _splice((reader, writer), self.target_port)
                    return
                head = await reader.readuntil(b"\r\n\r\n")
                await self._forward(head, reader, writer)
        finally:  # also when the front stops mid-request (a cancellation)
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.close()

    async def _forward(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One absolute-form request: check credentials, rewrite to origin form, pipe."""
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
        headers = [h for h in header_lines if h]
        given = next(
            (h.partition(":")[2].strip() for h in headers if h.lower().startswith("proxy-auth")),
            None,
        )
        if self.auth is not None and given != "Basic " + base64.b64encode(
            self.auth.encode()
        ).decode("ascii"):
            self.refused += 1
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                b"Connection: close\r\n\r\n"
            )
            await writer.drain()
            return
        url = urlsplit(target)
        self.served += 1
        kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection"))]
        path = url.path + (f"?{url.query}" if url.query else "")
        origin = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        await _splice((reader, writer), url.port or 80, origin.encode("latin-1"))

    async def _listen(self) -> tuple[int, Closer]:
        return await stream_server(self._handle, ssl=self.server_ssl)
