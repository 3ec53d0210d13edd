"""The input file: parse and validate lines, reject duplicate ids, shard, estimate tokens.

Two passes, so a file of millions of requests never sits in memory: `scan_input` reads every
line once to validate it and collect the set of custom_ids (duplicates are refused before
anything is sent), then `iter_lines` streams the file again for dispatch, one parsed line at
a time. Every line gets an id: its `custom_id`, or for a plain request body (and a line too
broken to name one) a stand-in, `line-N` from its 1-based line number, so even a bad line is
reported exactly once. A stand-in gets `_` appended while a real custom_id of the file has
its name, so it never collides with one; the same file always gives the same stand-ins.

Every line also gets a digest of what it asks (method, url and body; a bad line's bytes): the
records remember it, so a resume notices an input edited since (`InputScan.changed`,
`.removed`) instead of keeping an old answer for a new question. A UTF-8 BOM at the start of
the file (Excel, PowerShell and pandas' `utf-8-sig` write one) is skipped.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from engine.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

# Batch API url -> the engine's endpoint name. The base URL already ends in /v1.
URLS: Final = {
    "/v1/responses": "responses",
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/responses": "responses",
    "/chat/completions": "chat",
    "/completions": "completions",
}
BATCH_KEYS: Final = frozenset({"custom_id", "method", "url", "body"})
CHARS_PER_TOKEN: Final = 4  # the usual rule of thumb for English text; corrected by settle()
MAX_OUTPUT_KEYS: Final = ("max_output_tokens", "max_completion_tokens", "max_tokens")
REPORTED_PROBLEMS: Final = 20  # bad lines kept for the report; the errors file has them all
REPORTED_CHANGES: Final = 5  # custom_ids named when an edited input is refused
STAND_IN: Final = re.compile(r"line-[0-9]+_*")  # the shape of every stand-in id
BOM: Final = b"\xef\xbb\xbf"


class DuplicateCustomIdError(ConfigError):
    """The input names one custom_id on two lines: nothing may be sent."""


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` (1-based) of `count`: the ids whose stable hash falls in it."""

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ConfigError(f"shard must be I/N with 1 <= I <= N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"2/8"` -> Shard(2, 8)."""
        index, sep, count = text.partition("/")
        try:
            if sep:
                return cls(int(index), int(count))
        except ValueError:
            pass
        raise ConfigError(f"--shard {text!r} is not I/N (e.g. 1/4)")

    def __contains__(self, custom_id: str) -> bool:
        # crc32, not hash(): Python's str hash is salted per process, shards must agree.
        return self.count == 1 or zlib.crc32(custom_id.encode()) % self.count == self.index - 1


@dataclass(slots=True)
class Request:
    """A valid input line, ready to send."""

    line: int
    custom_id: str
    endpoint: str | None  # "responses", "chat", "completions"; None: the engine's rule
    body: dict[str, Any]
    estimated_tokens: int
    stand_in: bool = False  # custom_id is made up from the line number (a plain body)
    digest: str = ""  # of method, url and body: what was asked (see `request_digest`)


@dataclass(slots=True)
class BadLine:
    """An input line that cannot be sent; it ends in the errors file with its line number."""

    line: int
    custom_id: str
    message: str
    stand_in: bool = False  # custom_id is made up from the line number (no usable custom_id)
    digest: str = ""  # of the line's bytes


@dataclass(slots=True)
class InputScan:
    """What the first pass learned: counts, problems and the token estimate of the shard."""

    lines: int = 0  # non-blank lines in the whole file
    requests: int = 0  # valid lines in this shard
    bad: int = 0  # invalid lines in this shard
    estimated_tokens: int = 0  # of the shard's valid requests
    ids: set[str] = field(default_factory=set)  # the shard's custom_ids, valid or not
    bad_ids: set[str] = field(default_factory=set)  # those of the invalid lines
    problems: list[BadLine] = field(default_factory=list)  # the first few bad lines
    # Real custom_ids (whole file) shaped like a stand-in: the stand-ins must avoid them.
    reserved: frozenset[str] = frozenset()
    duplicates: list[tuple[str, int]] = field(default_factory=list)  # (id, line) seen again
    # Against the records already written (`scan_input(..., done=)`): done ids whose line now
    # asks something else, and done ids no line names any more; the first few of each.
    changed: list[str] = field(default_factory=list)
    changed_count: int = 0
    removed: list[str] = field(default_factory=list)
    removed_count: int = 0


def text_chars(value: Any) -> int:
    """Characters of every string value (not key) in a JSON body: the prompt's size."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(text_chars(v) for v in value)
    return 0


def estimate_tokens(body: dict[str, Any], default_output_tokens: int) -> int:
    """Input from the text length plus the output cap: what TPM is charged before the call."""
    output = next(
        (body[k] for k in MAX_OUTPUT_KEYS if isinstance(body.get(k), int)), default_output_tokens
    )
    return math.ceil(text_chars(body) / CHARS_PER_TOKEN) + max(int(output), 0)


def digest(raw: bytes) -> str:
    """A short stable digest (16 hex digits): what a record remembers of its request."""
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def request_digest(method: str, url: str | None, body: dict[str, Any]) -> str:
    """What a line asks, independent of its JSON's key order and spacing."""
    return digest(orjson.dumps([method, url, body], option=orjson.OPT_SORT_KEYS))


def stand_in_id(line: int, reserved: frozenset[str]) -> str:
    """`line-12` for line 12, `line-12_` if a real custom_id is `line-12`, and so on.

    Stand-ins cannot collide with each other (the digits differ, `_` is not a digit) nor,
    `reserved` holding every real id of that shape, with a real one.
    """
    cid = f"line-{line}"
    while cid in reserved:
        cid += "_"
    return cid


def _bad(line: int, reserved: frozenset[str], why: str, raw: bytes) -> BadLine:
    cid = stand_in_id(line, reserved)
    return BadLine(line, cid, f"line {line}: {why}", stand_in=True, digest=digest(raw))


def parse_line(  # noqa: PLR0911 - one early return per way a line can be wrong
    raw: bytes,
    line: int,
    default_output_tokens: int,
    reserved: frozenset[str] = frozenset(),
) -> Request | BadLine:
    """One input line, in the Batch API format or a plain request body.

    `reserved`: the file's real custom_ids shaped like a stand-in (`InputScan.reserved`).
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _bad(line, reserved, f"not valid JSON ({exc})", raw)
    if not isinstance(obj, dict):
        return _bad(line, reserved, f"expected a JSON object, got {type(obj).__name__}", raw)
    if not BATCH_KEYS & obj.keys():  # a plain body: the endpoint follows from its shape
        if "model" not in obj:
            return _bad(line, reserved, "body has no model", raw)
        return Request(
            line,
            stand_in_id(line, reserved),
            None,
            obj,  # the engine's rule
            estimate_tokens(obj, default_output_tokens),
            stand_in=True,
            digest=request_digest("POST", None, obj),
        )
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _bad(line, reserved, "custom_id must be a non-empty string", raw)
    problem = _check_batch_line(obj)
    if problem:
        return BadLine(line, custom_id, f"line {line}: {problem}", digest=digest(raw))
    body = obj["body"]
    return Request(
        line,
        custom_id,
        URLS[obj["url"]],
        body,
        estimate_tokens(body, default_output_tokens),
        digest=request_digest(obj.get("method", "POST"), obj["url"], body),
    )


def _check_batch_line(obj: dict[str, Any]) -> str | None:
    method = obj.get("method", "POST")
    if method != "POST":
        return f"method must be POST, got {method!r}"
    url = obj.get("url")
    if url not in URLS:
        return f"url must be /v1/responses, /v1/chat/completions or /v1/completions, got {url!r}"
    body = obj.get("body")
    if not isinstance(body, dict):
        return "body must be a JSON object" if "body" in obj else "body is missing"
    if "model" not in body:
        return "body has no model"
    return None


def _numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, stripped bytes) of every non-blank line; a BOM is skipped."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            stripped = (raw.removeprefix(BOM) if number == 1 else raw).strip()
            if stripped:
                yield number, stripped


def scan_input(
    path: Path,
    shard: Shard,
    default_output_tokens: int,
    done: Mapping[str, str] | None = None,
) -> InputScan:
    """Validate every line; raise DuplicateCustomIdError naming both line numbers.

    `done`: the digests of the records already written, by custom_id; the scan lists those
    whose line changed or is gone (`changed`, `removed`). Stand-ins are named before every
    real id is known; if a real id turns out to have a stand-in's shape, the file is scanned
    again with it reserved (rare, and only then).
    """
    scan = _scan(path, shard, default_output_tokens, frozenset(), done)
    if scan.reserved:
        scan = _scan(path, shard, default_output_tokens, scan.reserved, done)
    if scan.duplicates:
        raise DuplicateCustomIdError(_duplicate_message(path, scan.duplicates, scan.reserved))
    return scan


def _scan(
    path: Path,
    shard: Shard,
    default_output_tokens: int,
    reserved: frozenset[str],
    done: Mapping[str, str] | None,
) -> InputScan:
    scan = InputScan()
    seen: set[str] = scan.ids if shard.count == 1 else set()  # one set when not sharded
    found: set[str] = set()  # real ids shaped like a stand-in
    for number, raw in _numbered_lines(path):
        scan.lines += 1
        parsed = parse_line(raw, number, default_output_tokens, reserved)
        cid = parsed.custom_id
        if not parsed.stand_in and cid.startswith("line-") and STAND_IN.fullmatch(cid):
            found.add(cid)
        if cid in seen:
            scan.duplicates.append((cid, number))
            continue
        seen.add(cid)
        if done is not None and done.get(cid, parsed.digest) != parsed.digest:
            scan.changed_count += 1
            if len(scan.changed) < REPORTED_CHANGES:
                scan.changed.append(cid)
        if cid not in shard:
            continue
        if seen is not scan.ids:
            scan.ids.add(cid)
        if isinstance(parsed, BadLine):
            scan.bad += 1
            scan.bad_ids.add(cid)
            if len(scan.problems) < REPORTED_PROBLEMS:
                scan.problems.append(parsed)
        else:
            scan.requests += 1
            scan.estimated_tokens += parsed.estimated_tokens
    scan.reserved = frozenset(found)
    if done is not None:
        for cid in done:
            if cid not in seen:
                scan.removed_count += 1
                if len(scan.removed) < REPORTED_CHANGES:
                    scan.removed.append(cid)
    return scan


def _duplicate_message(
    path: Path, duplicates: list[tuple[str, int]], reserved: frozenset[str]
) -> str:
    """Find each duplicate's first line (a second read, only on this error path)."""
    shown = duplicates[:REPORTED_PROBLEMS]
    wanted = {cid for cid, _ in shown}
    first: dict[str, int] = {}
    for number, raw in _numbered_lines(path):
        cid = parse_line(raw, number, 0, reserved).custom_id
        if cid in wanted and cid not in first:
            first[cid] = number
    parts = [f"custom_id {cid!r} on line {first[cid]} and line {number}" for cid, number in shown]
    more = len(duplicates) - len(shown)
    tail = f" (and {more} more)" if more else ""
    return f"{path}: duplicate custom_id: " + "; ".join(parts) + tail


def iter_lines(
    path: Path,
    shard: Shard,
    default_output_tokens: int,
    skip: set[str] | frozenset[str] = frozenset(),
    reserved: frozenset[str] = frozenset(),
) -> Iterator[Request | BadLine]:
    """Second pass: the shard's lines not in `skip`, parsed one at a time.

    `reserved` must be the scan's (`InputScan.reserved`): it decides the stand-in ids.
    """
    for number, raw in _numbered_lines(path):
        parsed = parse_line(raw, number, default_output_tokens, reserved)
        if parsed.custom_id in shard and parsed.custom_id not in skip:
            yield parsed
