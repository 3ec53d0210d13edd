"""Reading a body a server compressed although we asked it not to.

The engine asks for `Accept-Encoding: identity`: an SSE stream of small events gains little
from compression on the wire and costs CPU per event to inflate (see docs/decisions.md). Some
gateways and proxies compress anyway (gzip or deflate, often flushed per event); `Inflater`
undoes that per chunk, as bytes arrive, before the SSE parser, so arrival stamps stay those of
the compressed bytes and nothing waits for the end of the body. Sans-I/O: stdlib zlib only.
"""

from __future__ import annotations

import zlib
from typing import Final

from engine.errors import ProtocolError

__all__ = ["Inflater", "inflater_for"]

GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
ZLIB_WBITS: Final = zlib.MAX_WBITS
RAW_WBITS: Final = -zlib.MAX_WBITS


class Inflater:
    """Incremental gzip / deflate (zlib-wrapped, or raw as some servers send it)."""

    __slots__ = ("_inflate", "encoding", "nbytes")

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.nbytes = 0  # compressed bytes fed so far, for error offsets
        wbits = GZIP_WBITS if encoding in ("gzip", "x-gzip") else ZLIB_WBITS
        self._inflate = zlib.decompressobj(wbits)

    def feed(self, chunk: bytes) -> bytes:
        """The bytes `chunk` inflates to (possibly none yet)."""
        offset = self.nbytes
        self.nbytes += len(chunk)
        try:
            return self._inflate.decompress(chunk)
        except zlib.error as exc:
            if offset == 0 and self.encoding == "deflate":  # raw deflate, no zlib header
                self.encoding = "deflate (raw)"
                self._inflate = zlib.decompressobj(RAW_WBITS)
                self.nbytes = 0
                return self.feed(chunk)
            raise ProtocolError(
                f"body is not valid {self.encoding} ({exc})", offset=offset, raw=chunk
            ) from None


def inflater_for(content_encoding: str | None) -> Inflater | None:
    """An `Inflater` for a response's `Content-Encoding`, None when it is not compressed;
    `ProtocolError` for an encoding this engine cannot read (it asked for none)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return Inflater(encoding)
    raise ProtocolError(f"body is compressed with {encoding!r}, which this client cannot read")
