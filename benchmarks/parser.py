"""SSE parsing alone: µs per event and MB/s of `engine.sse` against its peers, same bytes.

Contestants, each fed the same chunks in the same process and run, round-robin:
  engine         `SSEParser().feed(chunk)` (public API, default `SSEMessage` factory)
  httpx-sse      httpx's incremental UTF-8 `TextDecoder` + `SSELineDecoder` + `SSEDecoder`,
                 exactly the chain `EventSource.aiter_sse` runs
  openai         `openai._streaming.SSEDecoder().iter_bytes(chunks)` (the SDK's decoder)
  aiohttp-lines  `aiohttp.StreamReader` fed the chunks, `async for line in reader`, keeping
                 `data: ` lines and dispatching on blank lines (the naive client's parser)
  engine-events  (separate line, not a parser) the engine's own parser output (flat),
                 `EventDecoder.decode` and `text_delta` of every event: what a handler gets
  engine-pure, engine-events-pure  the same two from the .py sources, in the same process
                 (`engine._compiled.load_sources`): when the hot path is compiled
                 (`python -m engine.build`), `engine` is the compiled one and both paths are
                 timed side by side; with no build the pair is the same code twice

Streams: Responses and Chat Completions of N text deltas as the mock renders them, LF and
CRLF, one event per chunk and 64 KiB chunks. Every contestant must find the same number of
events (and engine-events the exact text), or the run fails.

    python benchmarks/parser.py [--deltas 500] [--repeats 15]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.base_protocol import BaseProtocol
from httpx._decoders import TextDecoder
from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder
from openai._streaming import SSEDecoder as OpenAISSEDecoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import chunked, stream_events, summary
from engine import COMPILED, _compiled, _flat
from engine.events import EventDecoder, events_of
from engine.sse import SSEParser

_PURE = _compiled.load_sources("engine.sse", "engine.events")

# A contestant parses the stream `passes` times and returns (events, text) of one pass.
Contestant = Callable[[list[bytes], int], tuple[int, str | None]]
PARSERS = ("engine", "httpx-sse", "openai", "aiohttp-lines")
EVENTS_LINE = "engine-events"
PURE_LINES = ("engine-pure", "engine-events-pure")  # the .py sources, beside what is loaded
CONTESTANTS = (*PARSERS, EVENTS_LINE, *PURE_LINES)
TARGET_PASS_EVENTS = 20_000  # events per timed repetition, so one repetition is ~10+ ms


def run_engine(
    chunks: list[bytes], passes: int, parser: type[SSEParser] = SSEParser
) -> tuple[int, str | None]:
    count = 0
    for _ in range(passes):
        feed = parser().feed
        count = 0
        for chunk in chunks:
            count += len(feed(chunk))
    return count, None


def run_engine_pure(chunks: list[bytes], passes: int) -> tuple[int, str | None]:
    return run_engine(chunks, passes, _PURE["engine.sse"].SSEParser)


def run_engine_events(
    chunks: list[bytes],
    passes: int,
    decoders: type[EventDecoder] = EventDecoder,
    events_of: Callable[..., Any] = events_of,
) -> tuple[int, str | None]:
    count = 0
    parts: list[str] = []
    for _ in range(passes):
        decoder = decoders()
        feed, scan = decoder.parser().feed, decoder.scan
        count, parts = 0, []
        for chunk in chunks:
            messages = feed(chunk)
            if messages:
                count += _flat.count(messages)  # the engine's own layout (engine._flat)
                for event in events_of(scan(messages, 0), 0):
                    delta = event.text_delta
                    if delta:
                        parts.append(delta)
    return count, "".join(parts)


def run_engine_events_pure(chunks: list[bytes], passes: int) -> tuple[int, str | None]:
    pure = _PURE["engine.events"]
    return run_engine_events(chunks, passes, pure.EventDecoder, pure.events_of)


def run_httpx_sse(chunks: list[bytes], passes: int) -> tuple[int, str | None]:
    count = 0
    for _ in range(passes):
        text = TextDecoder("utf-8")
        lines, sse = SSELineDecoder(), HttpxSSEDecoder()
        count = 0
        for chunk in chunks:
            for line in lines.decode(text.decode(chunk)):
                if sse.decode(line.rstrip("\n")) is not None:
                    count += 1
        rest = text.flush()
        for line in [*(lines.decode(rest) if rest else []), *lines.flush()]:
            if sse.decode(line.rstrip("\n")) is not None:
                count += 1
    return count, None


def run_openai(chunks: list[bytes], passes: int) -> tuple[int, str | None]:
    count = 0
    for _ in range(passes):
        count = 0
        for _sse in OpenAISSEDecoder().iter_bytes(iter(chunks)):
            count += 1
    return count, None


async def _aiohttp_lines(chunks: list[bytes], passes: int) -> int:
    loop = asyncio.get_running_loop()
    count = 0
    for _ in range(passes):
        # A limit far above the stream size: the reader never pauses the (absent) transport.
        reader = aiohttp.StreamReader(BaseProtocol(loop), 2**30, loop=loop)
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        count, data = 0, []
        async for line in reader:
            if line.startswith(b"data: "):
                data.append(line[6:])
            elif line in (b"\n", b"\r\n") and data:
                count += 1
                data = []
    return count


def make_aiohttp_lines() -> Contestant:
    loop = asyncio.new_event_loop()

    def run(chunks: list[bytes], passes: int) -> tuple[int, str | None]:
        # All passes inside one coroutine: no per-pass event-loop start-up in the timing.
        return loop.run_until_complete(_aiohttp_lines(chunks, passes)), None

    return run


def contestants() -> dict[str, Contestant]:
    return {
        "engine": run_engine,
        "httpx-sse": run_httpx_sse,
        "openai": run_openai,
        "aiohttp-lines": make_aiohttp_lines(),
        EVENTS_LINE: run_engine_events,
        "engine-pure": run_engine_pure,
        "engine-events-pure": run_engine_events_pure,
    }


def bench_case(
    name: str,
    chunks: list[bytes],
    runners: dict[str, Contestant],
    text: str,
    repeats: int,
    passes: int,
) -> dict[str, Any]:
    """Warm up, then `repeats` round-robin repetitions of `passes` passes per contestant."""
    nbytes = sum(map(len, chunks))
    events, _ = run_engine(chunks, 1)
    for who, run in runners.items():  # warm-up doubles as the correctness check
        found, got_text = run(chunks, 1)
        if found != events:
            raise AssertionError(f"{name}: {who} found {found} events, engine {events}")
        if got_text is not None and got_text != text:
            raise AssertionError(f"{name}: {who} assembled the wrong text")
    times: dict[str, list[float]] = {who: [] for who in runners}
    for _ in range(repeats):
        for who, run in runners.items():
            gc.collect()
            t0 = time.perf_counter()
            run(chunks, passes)
            times[who].append((time.perf_counter() - t0) / passes)
    return {
        "case": name,
        "bytes": nbytes,
        "chunks": len(chunks),
        "events": events,
        "passes_per_repeat": passes,
        "results": {
            who: {
                "us_per_event": summary([t / events * 1e6 for t in ts]),
                "mb_per_s_at_min": round(nbytes / min(ts) / 1e6, 1),
                "mb_per_s_at_median": round(nbytes / statistics.median(ts) / 1e6, 1),
            }
            for who, ts in times.items()
        },
    }


def run(deltas: int = 500, repeats: int = 15) -> dict[str, Any]:
    """Every case; ratios are peer / engine on the same bytes (>1: the engine is faster)."""
    runners = contestants()
    cases = []
    for dialect in ("responses", "chat"):
        events, text = stream_events(dialect, deltas)
        for crlf in (False, True):
            for coalesced in (False, True):
                name = (
                    f"{dialect}-{'crlf' if crlf else 'lf'}-"
                    f"{'64KiB-chunks' if coalesced else 'event-per-chunk'}"
                )
                chunks = chunked(events, crlf=crlf, coalesced=coalesced)
                passes = max(1, TARGET_PASS_EVENTS // len(events)) if repeats > 2 else 1
                cases.append(bench_case(name, chunks, runners, text, repeats, passes))
    for case in cases:
        res = case["results"]
        mine = res["engine"]["us_per_event"]
        case["ratios_vs_engine"] = {
            who: {
                stat: round(res[who]["us_per_event"][stat] / mine[stat], 2)
                for stat in ("min", "median")
            }
            for who in PARSERS[1:]
        }
    for case in cases:
        res = case["results"]
        case["pure_over_compiled"] = {
            line: {
                stat: round(res[pure]["us_per_event"][stat] / res[line]["us_per_event"][stat], 2)
                for stat in ("min", "median")
            }
            for line, pure in (("engine", "engine-pure"), (EVENTS_LINE, "engine-events-pure"))
        }
    by_name = {c["case"]: c["results"]["engine"]["us_per_event"] for c in cases}
    lf, crlf = by_name["responses-lf-64KiB-chunks"], by_name["responses-crlf-64KiB-chunks"]
    return {
        "deltas_per_stream": deltas,
        "repeats": repeats,
        "compiled": COMPILED,  # `engine` (and engine-events) ran compiled
        "contestants": list(CONTESTANTS),
        "cases": cases,
        "budget": {
            "lf_coalesced_us_per_event": {
                "limit": 0.6,
                "min": lf["min"],
                "median": lf["median"],
                "holds": lf["min"] <= 0.6,
            },
            "crlf_coalesced_us_per_event": {
                "limit": 1.0,
                "min": crlf["min"],
                "median": crlf["median"],
                "holds": crlf["min"] <= 1.0,
            },
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(run(args.deltas, args.repeats), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
