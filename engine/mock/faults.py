"""Fault injection: which misbehaviour a request gets, and OpenAI-shaped error bodies.

A request's faults come from the `x-mock-fault` header (comma-separated, forced) or, failing
that, from one seeded draw against the configured rates (at most one fault per request).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from engine.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

STATUS_KINDS = frozenset({"429", "500", "503"})
CUT_KINDS = frozenset({"disconnect", "stall"})  # take an optional `:N` (events before the cut)
# error-chunk: a gateway's `{"error": ...}` inside a chat chunk, then [DONE] (an `error`
# event on the Responses API)
ENDING_KINDS = frozenset({"error-event", "error-chunk", "failed", "incomplete"})
FRAMING_KINDS = frozenset({"bom", "crlf", "comments", "done-after"})
OTHER_KINDS = frozenset({"reset", "html", "malformed", "chat-on-responses"})
FAULT_KINDS = STATUS_KINDS | CUT_KINDS | ENDING_KINDS | FRAMING_KINDS | OTHER_KINDS

_STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key"),
    404: ("invalid_request_error", "Invalid URL.", None),
    429: (
        "requests",
        "Rate limit reached for requests (mock). Please try again in a moment.",
        "rate_limit_exceeded",
    ),
    500: ("server_error", "The server had an error while processing your request. (mock)", None),
    503: (
        "server_error",
        "The engine is currently overloaded, please try again later. (mock)",
        None,
    ),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault kind with its optional event count (`disconnect:3`)."""

    kind: str
    count: int | None = None


def parse_fault(spec: str) -> Fault:
    """`"stall:5"` -> Fault("stall", 5); raises ConfigError on an unknown kind."""
    kind, sep, count = spec.strip().partition(":")
    if kind not in FAULT_KINDS:
        raise ConfigError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}")
    if not sep:
        return Fault(kind)
    if kind not in CUT_KINDS or not count.isdigit():
        raise ConfigError(f"fault {spec!r}: only disconnect/stall take ':N' (N >= 0)")
    return Fault(kind, int(count))


@dataclass(frozen=True, slots=True)
class FaultSet:
    """The faults of one request, sorted by the stage that acts on them."""

    status: int | None = None  # answer 429/500/503 instead of generating
    reset: bool = False  # abort the connection before any response header
    html: bool = False  # 200 with a gateway-style HTML page
    cut: Fault | None = None  # disconnect/stall after `count` events (None: mid-stream)
    ending: str | None = None  # error-event / error-chunk / failed / incomplete replace the end
    malformed: bool = False
    chat_on_responses: bool = False
    bom: bool = False
    crlf: bool = False
    comments: bool = False
    done_after: bool = False

    @property
    def kinds(self) -> list[str]:
        """Kind names, for the stats counters."""
        names = [f.name.replace("_", "-") for f in _FLAGS if getattr(self, f.name)]
        if self.status is not None:
            names.append(str(self.status))
        if self.cut is not None:
            names.append(self.cut.kind)
        if self.ending is not None:
            names.append(self.ending)
        return names

    @property
    def replaces_answer(self) -> bool:
        """A status, a reset or an HTML page comes instead of any generation."""
        return self.status is not None or self.reset or self.html

    @property
    def reshapes_stream(self) -> bool:
        """True when the writer must look at every batch (the no-fault path skips it)."""
        return bool(self.cut or self.malformed or self.bom or self.crlf or self.comments)


_FLAGS = [f for f in FaultSet.__dataclass_fields__.values() if f.type == "bool"]


def fault_set(faults: Iterable[Fault]) -> FaultSet:
    """Fold parsed faults into the per-stage view the server acts on."""
    values: dict[str, object] = {}
    for fault in faults:
        if fault.kind in STATUS_KINDS:
            values.setdefault("status", int(fault.kind))
        elif fault.kind in CUT_KINDS:
            values.setdefault("cut", fault)
        elif fault.kind in ENDING_KINDS:
            values.setdefault("ending", fault.kind)
        else:
            values[fault.kind.replace("-", "_")] = True
    return FaultSet(**values)  # type: ignore[arg-type]


NO_FAULTS = FaultSet()


class FaultPicker:
    """One seeded uniform draw per request against cumulative rates: reproducible fault mixes."""

    __slots__ = ("_rng", "_table")

    def __init__(self, rates: Mapping[str, float], seed: int) -> None:
        self._rng = random.Random(seed)
        self._table: list[tuple[float, FaultSet]] = []
        total = 0.0
        for spec, rate in rates.items():
            if rate > 0:
                total += rate
                self._table.append((total, fault_set([parse_fault(spec)])))

    def pick(self, header: str | None) -> FaultSet:
        """The header wins (tests force faults); else the seeded draw, if any rate is set."""
        if header:
            return fault_set(parse_fault(s) for s in header.split(",") if s.strip())
        if not self._table:
            return NO_FAULTS
        draw = self._rng.random()
        for bound, faults in self._table:
            if draw < bound:
                return faults
        return NO_FAULTS


def error_object(
    status: int, message: str | None = None, *, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    """OpenAI's error object for an HTTP status; `message`/`code` override the defaults."""
    kind, default_message, default_code = _STATUS_ERRORS.get(status, _STATUS_ERRORS[500])
    return {
        "message": message or default_message,
        "type": kind,
        "param": param,
        "code": code if code is not None else default_code,
    }


def error_body(
    status: int, message: str | None = None, *, param: str | None = None, code: str | None = None
) -> bytes:
    """`{"error": {...}}` as bytes, the body of every non-2xx answer."""
    return orjson.dumps({"error": error_object(status, message, param=param, code=code)})


HTML_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>mock</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
