"""Incremental Server-Sent Events parser: bytes in, messages out, no I/O.

Exact to the WHATWG HTML "event stream interpretation" (section 9.2.6): CRLF, LF and lone CR
line endings (also split across chunks), a BOM only at stream start, comments, fields without a
colon, one leading space stripped from values, `id` containing NUL ignored, `retry` digits only
(and ignored when it does not fit 64 bits; see MAX_RETRY_MS),
blocks without `data` not dispatched, an unfinished event discarded at end of stream.

One addition to the spec: an `error:` line, a field the spec ignores, is dispatched at once as
an event named `error` with the line's value as its data. llama.cpp's server reported a
failure mid-stream that way (`error: {...}` then `data: [DONE]`); read to the letter, the
failure vanished and the stream looked like an empty success.

Speed comes from working on whole chunks: one `split(b"\\n")` per chunk (a chunk with CR is
split on CRLF when every line ends that way, else normalised first), bytes kept undecoded,
and a partial line kept as a list of fragments so a long line arriving in many chunks is
joined once, not re-copied per chunk.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic

from engine.errors import ProtocolError

if sys.version_info >= (3, 13):  # pragma: no cover - the suite runs on 3.11 (pyproject)
    from typing import TypeVar
else:
    from typing_extensions import TypeVar  # a TypeVar with a default (PEP 696)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MAX_EVENT_BYTES", "MAX_RETRY_MS", "FlatSSEParser", "SSEMessage", "SSEParser"]

MAX_EVENT_BYTES = 16 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_NAME_CACHE_SIZE = 1024
_LINE_COST = len(b"data: \n")  # what a data line adds to an event's size besides its value
# The spec sets the reconnection time to any all-digit `retry` value, however long. A value
# that does not fit a signed 64-bit integer (about 292 million years in ms) cannot be a delay
# anyone meant, and `int()` of more than 4300 digits raises ValueError (CPython's int-string
# limit), so such values are ignored like any other invalid `retry`. Leading zeros are
# stripped first: "0005" is 5 however many zeros there are.
MAX_RETRY_MS = 2**63 - 1
_MAX_RETRY_DIGITS = len(str(MAX_RETRY_MS))
# Event names repeat on every event of a stream: each distinct `event: NAME` line is decoded
# once, keyed by the whole line (no slice per event).
_names: dict[bytes, str] = {}


def _event_name(line: bytes) -> str:
    """The name of an `event: NAME` line, decoded as the spec says (U+FFFD for bad UTF-8)."""
    name = line[7:].decode("utf-8", "replace")
    if len(_names) < _NAME_CACHE_SIZE:
        _names[line] = name
    return name


@dataclass(slots=True, init=False)
class SSEMessage:
    """One dispatched event. `raw` is the data buffer as bytes (lines joined by LF)."""

    raw: bytes
    event: str
    id: str | None

    # Written out, not generated: mypyc compiles a dataclass's generated __init__ as a call
    # into the interpreter (~0.1 us per message); this one it compiles to C.
    def __init__(self, raw: bytes, event: str = "message", id: str | None = None) -> None:  # noqa: A002
        self.raw = raw
        self.event = event
        self.id = id

    def __reduce__(self) -> tuple[type[SSEMessage], tuple[bytes, str, str | None]]:
        # Pickled (and copied) by its arguments: compiled, the default would call the class
        # with none (see docs/compiled.md).
        return (SSEMessage, (self.raw, self.event, self.id))

    @property
    def data(self) -> str:
        """The data buffer as text; invalid UTF-8 becomes U+FFFD, as the spec decodes."""
        return self.raw.decode("utf-8", "replace")


M = TypeVar("M", default=SSEMessage)


class SSEParser(Generic[M]):
    """Sans-I/O SSE parser: `feed(chunk)` returns the messages the chunk completed.

    `factory` builds each message from `(raw, event, id)`. With `factory=None`, `feed` returns
    one flat list, three items per message: `[raw, event, id, raw, event, id, ...]`. The
    engine's reader asks for that: bytes and strings are no work for the cyclic garbage
    collector, while an object per message, waiting in a queue for its consumer, is counted,
    traversed and promoted by it (see `engine.events.EventDecoder`). `FlatSSEParser` is that
    parser, typed as such.

    One `__init__`, no overloads: mypyc builds a class whose `__init__` is overloaded with a
    constructor that takes no argument (and the C does not compile). `SSEParser()` is typed
    `SSEParser[SSEMessage]` by M's default, `SSEParser(factory=f)` by `f`'s return type.
    """

    __slots__ = (
        "_at_start",
        "_counted",
        "_data",
        "_event",
        "_factory",
        "_failed",
        "_head",
        "_offset",
        "_pending",
        "_pending_bytes",
        "_skip_lf",
        "closed",
        "last_event_id",
        "max_event_bytes",
        "partial_discarded",
        "retry",
    )

    def __init__(
        self,
        max_event_bytes: int = MAX_EVENT_BYTES,
        *,
        # The default's type is M's default (SSEMessage); mypy checks a default against every
        # M, hence the ignore. `factory=None` (the flat layout) is typed by FlatSSEParser.
        factory: Callable[[bytes, str, str | None], M] = SSEMessage,  # type: ignore[assignment]
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self._factory: Callable[[bytes, str, str | None], Any] | None = factory
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self.closed = False
        # True when close() discarded an unfinished event or line (a truncated stream).
        self.partial_discarded = False
        self._data: list[bytes] = []
        self._event: str | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._counted = (0, 0)  # (items of _data already sized, their bytes)
        self._offset = 0
        self._at_start = True
        self._head = b""
        self._skip_lf = False
        self._failed: ProtocolError | None = None

    def feed(self, chunk: bytes) -> list[M]:
        """Consume the next bytes of the stream; return the events they completed."""
        if self._failed is not None:
            raise self._failed  # a parser that has raised stays dead (h11's ERROR state)
        if self.closed:
            raise RuntimeError("SSEParser.feed() after close()")
        if not chunk:
            return []
        self._offset += len(chunk)
        if self._at_start:
            chunk = self._strip_bom(chunk)
            if not chunk:
                return []
        if self._skip_lf:
            # The previous chunk ended in CR: an LF starting this one completes that CRLF.
            self._skip_lf = False
            if chunk[0] == 10:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if 13 in chunk:
            # A CRLF stream: split on CRLF, and check that no CR or LF is left in the lines
            # (one join and two memchr scans: cheaper than `replace`, which copies piecewise).
            lines = chunk.split(b"\r\n")
            rest = b"".join(lines)
            if 13 in rest or 10 in rest:  # mixed endings, a lone CR, or a CR ending the chunk
                self._skip_lf = chunk[-1] == 13
                chunk = chunk.replace(b"\r\n", b"\n")
                if 13 in chunk:  # a lone CR: rare, so such streams pay for one pass, not two
                    chunk = chunk.replace(b"\r", b"\n")
                lines = chunk.split(b"\n")
        else:
            lines = chunk.split(b"\n")
        tail = lines.pop()
        if not lines:  # no line ended in this chunk
            self._pending.append(tail)
            self._pending_bytes += len(tail)
            self._check_size()
            return []
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending = []
            self._pending_bytes = 0
        out: list[M] = []
        data = self._data
        event = self._event
        factory = self._factory
        name_of = _names.get
        last_id = self.last_event_id
        for line in lines:
            if not line:  # blank line: dispatch
                if data:
                    raw = data[0] if len(data) == 1 else b"\n".join(data)
                    name = event or "message"  # an empty name is "message" too (spec)
                    if factory is None:
                        out += (raw, name, last_id)  # type: ignore[arg-type] # flat, see above
                    else:
                        out.append(factory(raw, name, last_id))
                    data.clear()  # one list for the stream: raw holds what it needs
                event = None
            elif line[:6] == b"data: ":
                data.append(line[6:])
            elif (known := name_of(line)) is not None:  # an `event: NAME` line seen before
                event = known
            elif line[:7] == b"event: ":
                event = _event_name(line)
            elif line[0] != 58:  # 58 is ":", a comment line
                if line[:6] == b"error:":  # see the module docstring
                    value = line[7:] if line[6:7] == b" " else line[6:]
                    if factory is None:
                        out += (value, "error", last_id)  # type: ignore[arg-type]
                    else:
                        out.append(factory(value, "error", last_id))
                    continue
                event = self._field(line, data, event)
                last_id = self.last_event_id  # an `id:` field may have changed it
        self._event = event
        if out:  # an event was dispatched: the sizes counted were of its lines
            self._counted = (0, 0)
        if tail:
            self._pending.append(tail)
            self._pending_bytes = len(tail)
        if data or tail:
            self._check_size()
        return out

    def close(self) -> list[M]:
        """End of stream. An unfinished event is discarded, never dispatched (spec)."""
        self.partial_discarded = bool(self._data or self._pending or self._head)
        self.closed = True
        self._data = []
        self._pending = []
        return []

    def _field(self, line: bytes, data: list[bytes], event: str | None) -> str | None:
        """The general field rule, for lines the fast paths did not match."""
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            return value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():  # ASCII digits only; False for b""
            digits = value.lstrip(b"0") or b"0"
            if len(digits) <= _MAX_RETRY_DIGITS and int(digits) <= MAX_RETRY_MS:
                self.retry = int(digits)
        return event

    def _strip_bom(self, chunk: bytes) -> bytes:
        head = self._head + chunk
        if len(head) < 3 and _BOM.startswith(head):
            self._head = head  # could still be a BOM split across chunks
            return b""
        self._at_start = False
        self._head = b""
        return head[3:] if head[:3] == _BOM else head

    def _check_size(self) -> None:
        """Enforce the cap on one event: data lines so far plus the unfinished line."""
        data = self._data
        items, size = self._counted
        if items < len(data):
            # Each line counts as sent, with its `data: ` and line end (7 bytes): a flood of
            # empty `data:` lines holds a list entry per line, and must meet the cap too.
            size += sum(map(len, data[items:])) + _LINE_COST * (len(data) - items)
            self._counted = (len(data), size)
        if size + self._pending_bytes > self.max_event_bytes:
            self._failed = ProtocolError(
                f"SSE event exceeds {self.max_event_bytes} bytes",
                offset=self._offset,
                raw=b"".join(self._pending[:1]) or (data[0] if data else b""),
            )
            # The error outlives the parser's caller (it is kept, and its traceback holds
            # `feed`'s frame): free the buffered event now, not when that is collected.
            data.clear()
            self._pending.clear()
            self._pending_bytes = 0
            raise self._failed


class FlatSSEParser(SSEParser[bytes | str | None]):
    """`SSEParser(max_event_bytes, factory=None)`, typed: `feed` returns the flat layout,
    `[raw, event, id, ...]` (see `SSEParser`)."""

    __slots__ = ()

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        super().__init__(max_event_bytes)
        self._factory = None
