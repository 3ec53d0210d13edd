"""The mock's own SSE framing (never `engine.sse`: server and client must not share a bug).

Events are bytes from the start; a batch of due events becomes one `write`. The framing
faults (BOM, CRLF, comment lines, a malformed event, a cut after N events) are applied per
batch by `Reshaper`, which the no-fault path never touches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from engine.mock.faults import FaultSet

DONE = b"data: [DONE]\n\n"
BOM = b"\xef\xbb\xbf"
KEEPALIVE = b": keep-alive\n\n"


def named_event(name: str, payload: Any) -> bytes:
    """`event: NAME` + one `data:` line; orjson never emits a raw newline, so one line is safe."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def data_event(payload: Any) -> bytes:
    """A `data:`-only event, as Chat Completions streams send them."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# Placeholders for per-token values: an event is rendered once per answer with them, then cut
# into the bytes around them, so that a token costs a concatenation, not a JSON encoding.
SLOT = "\x00slot\x00"
SEQ = "\x00seq\x00"
SLOT_JSON = orjson.dumps(SLOT)
SEQ_JSON = orjson.dumps(SEQ)


def cut_at_slots(event: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(before the first SLOT, the bytes between SLOTs, after the last SLOT)."""
    first, *rest = event.split(SLOT_JSON)
    return first, rest[:-1], rest[-1]


def percent_template(prefix: bytes, suffix: bytes) -> bytes:
    """`prefix %b suffix` as a bytes-% template whose `%d` is where SEQ stood."""

    def escape(part: bytes) -> bytes:
        return part.replace(b"%", b"%%").replace(SEQ_JSON, b"%d")

    return escape(prefix) + b"%b" + escape(suffix)


def broken_copy(event: bytes) -> bytes:
    """The event cut inside its JSON: still well-framed SSE, but the data does not parse."""
    data_at = event.find(b"data: ") + len(b"data: ")
    middle = data_at + max(1, (len(event) - data_at) // 2)
    return event[:middle] + b"\n\n"


class Reshaper:
    """Applies one request's framing faults to its batches, counting the events written."""

    __slots__ = ("_bom", "_comments", "_crlf", "cut_at", "cut_reached", "malformed_at", "sent")

    def __init__(self, faults: FaultSet, default_cut_at: int, malformed_at: int) -> None:
        self._bom = faults.bom
        self._crlf = faults.crlf
        self._comments = faults.comments
        self.cut_at: int | None = None
        if faults.cut is not None:
            count = faults.cut.count
            self.cut_at = default_cut_at if count is None else count
        self.malformed_at = malformed_at if faults.malformed else -1
        self.sent = 0
        self.cut_reached = False

    def render(self, batch: list[bytes]) -> bytes:
        """The bytes to write for `batch`; sets `cut_reached` once the cut count is written."""
        start = self.sent
        if self.cut_at is not None and len(batch) >= self.cut_at - start:
            batch = batch[: self.cut_at - start]
            self.cut_reached = True
        self.sent += len(batch)
        if start <= self.malformed_at < self.sent:
            at = self.malformed_at - start
            batch = [*batch[:at], broken_copy(batch[at]), *batch[at:]]
        if self._comments:
            data = b"".join([KEEPALIVE + event for event in batch])
        else:
            data = b"".join(batch)
        if self._crlf:
            data = data.replace(b"\n", b"\r\n")
        if self._bom and start == 0:
            data = BOM + data
        return data
