"""Trace replay: a file of real requests' arrival times and lengths, sent as recorded.

Two formats, told apart by the first non-blank line (`{` starts JSON Lines):

**JSON Lines** (Mooncake's traces), one request per line:

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47]}

- the time: `timestamp` in milliseconds, or `timestamp_s` / `time` in seconds (the first of
  these three that a row has);
- the lengths: `input_length` or `input_tokens`, `output_length` or `output_tokens`; a row
  without one leaves it to the workload (its configured length);
- `hash_ids` (optional): Mooncake's ids of the prompt's 512-token blocks, equal ids for
  equal blocks: the trace's prefix sharing. Kept per row; other keys are ignored.

**CSV** with BurstGPT's header, `Timestamp,Model,Request tokens,Response tokens,Total
tokens,Log Type`: `Timestamp` in seconds, the lengths from `Request tokens` and `Response
tokens`; the other columns are ignored. BurstGPT records a failed request with `Response
tokens` 0. Those rows are kept: the request still arrived and still loaded the server with
its prompt, and dropping them would thin the very arrival process a replay is for. The
replay asks for a 1-token answer there (no API takes a request for none).

Offsets count from the trace's first request (its earliest timestamp), so a replay starts
at once. Rows need not be in time order: they are sorted by time (rows with one time keep
their file order). A row that cannot be read stops the load before it starts, with the
file, the line and what is wrong (`path:line: ...`). Lengths are whole numbers >= 0.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from engine.errors import ConfigError
from engine.loadtest.jsonlines import json_lines

if TYPE_CHECKING:
    from collections.abc import Iterator

MISSING = -1  # a length the row does not give: the workload's configured one is used
TIME_KEYS = (("timestamp", 1e-3), ("timestamp_s", 1.0), ("time", 1.0))  # key, seconds per unit
INPUT_KEYS = ("input_length", "input_tokens")
OUTPUT_KEYS = ("output_length", "output_tokens")
CSV_TIME, CSV_INPUT, CSV_OUTPUT = "Timestamp", "Request tokens", "Response tokens"
CACHED_TRACES = 4  # a sweep or a search replays one trace many times; a process, a few

Row = tuple[float, int, int, tuple[int, ...] | None]


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """A trace's requests in time order. Arrays are read-only: one copy is shared by every
    schedule of the process (see `load_trace`)."""

    path: str
    offsets_s: np.ndarray  # float64 seconds from the first request, ascending
    input_tokens: np.ndarray  # int64 per row; MISSING where the row gave none
    output_tokens: np.ndarray
    hash_ids: tuple[tuple[int, ...] | None, ...] | None  # None: no row had any

    def __len__(self) -> int:
        return int(self.offsets_s.size)


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """The trace at `path`, read once per process while the file is unchanged:
    `open_schedule` asks for it per worker and per sweep segment."""
    name = Path(path).resolve()
    try:
        stat = name.stat()
    except OSError as exc:
        raise ConfigError(f"trace {os.fspath(path)}: {exc.strerror or exc}") from None
    return _load(str(name), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=CACHED_TRACES)
def _load(path: str, mtime_ns: int, size: int) -> Trace:
    """Keyed on the modification time and size too: an edited file is read again."""
    del mtime_ns, size
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as file:
            first = next((line for line in file if line.strip()), "")
            if not first:
                raise ConfigError(f"trace {path}: no requests")
            file.seek(0)
            parse = _jsonl_rows if first.lstrip().startswith("{") else _csv_rows
            rows = list(parse(file, path))
    except OSError as exc:
        raise ConfigError(f"trace {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"trace {path}: not UTF-8 text ({exc.reason})") from None
    if not rows:
        raise ConfigError(f"trace {path}: no requests")  # a header alone
    times = np.array([row[0] for row in rows], dtype=np.float64)
    order = np.argsort(times, kind="stable")  # stable: rows at one time keep file order
    offsets = times[order] - times[order[0]]
    inputs = np.array([row[1] for row in rows], dtype=np.int64)[order]
    outputs = np.array([row[2] for row in rows], dtype=np.int64)[order]
    hashes = None
    if any(row[3] is not None for row in rows):
        hashes = tuple(rows[i][3] for i in order.tolist())
    for array in (offsets, inputs, outputs):
        array.setflags(write=False)
    return Trace(path, offsets, inputs, outputs, hashes)


def _jsonl_rows(file: Any, path: str) -> Iterator[Row]:
    for number, row in json_lines(file, path):
        if not isinstance(row, dict):
            shown = orjson.dumps(row)[:60].decode(errors="replace")
            raise ConfigError(f"{path}:{number}: expected a JSON object, got {shown}")
        yield _json_row(row, f"{path}:{number}")


def _json_row(row: dict[str, Any], where: str) -> Row:
    for key, unit_s in TIME_KEYS:
        if key in row:
            seconds = _number(row[key], where, key) * unit_s
            break
    else:
        keys = ", ".join(key for key, _ in TIME_KEYS)
        raise ConfigError(f"{where}: no time: give one of {keys}")
    hashes = row.get("hash_ids")
    if hashes is not None and not (
        isinstance(hashes, list) and all(type(h) is int for h in hashes)
    ):
        raise ConfigError(f"{where}: hash_ids must be a list of integers")
    return (
        seconds,
        _length(row, INPUT_KEYS, where),
        _length(row, OUTPUT_KEYS, where),
        None if hashes is None else tuple(hashes),
    )


def _csv_rows(file: Any, path: str) -> Iterator[Row]:
    reader = csv.reader(file)
    header = [name.strip() for name in next(reader, [])]
    wanted = (CSV_TIME, CSV_INPUT, CSV_OUTPUT)
    missing = [name for name in wanted if name not in header]
    if missing:
        raise ConfigError(
            f"{path}:1: not a trace: expected JSON Lines, or a CSV header with "
            f"{', '.join(wanted)} (BurstGPT's); missing {', '.join(missing)}"
        )
    at = [header.index(name) for name in wanted]
    for fields in reader:
        if not any(field.strip() for field in fields):
            continue
        where = f"{path}:{reader.line_num}"
        if len(fields) < len(header):
            raise ConfigError(f"{where}: {len(fields)} fields, the header has {len(header)}")
        time_s, tokens_in, tokens_out = (fields[i].strip() for i in at)
        yield (
            _csv_number(time_s, where, CSV_TIME),
            _whole(_csv_number(tokens_in, where, CSV_INPUT), where, CSV_INPUT, tokens_in),
            _whole(_csv_number(tokens_out, where, CSV_OUTPUT), where, CSV_OUTPUT, tokens_out),
            None,
        )


def _csv_number(text: str, where: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {name} {text!r} is not a number") from None
    return _number(value, where, name, text)


def _number(value: Any, where: str, name: str, shown: Any = None) -> float:
    """`value` as a finite float; `shown`: what the file said, if not `value` (CSV text)."""
    shown = value if shown is None else shown
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {name} {shown!r} is not a number")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {name} {shown!r} is not a finite number")
    return float(value)


def _whole(value: Any, where: str, name: str, shown: Any = None) -> int:
    number = _number(value, where, name, shown)
    if number < 0 or number != int(number):
        shown = value if shown is None else shown
        raise ConfigError(f"{where}: {name} {shown!r} is not a whole number >= 0")
    return int(number)


def _length(row: dict[str, Any], keys: tuple[str, ...], where: str) -> int:
    for key in keys:
        if key in row:
            return _whole(row[key], where, key)
    return MISSING
