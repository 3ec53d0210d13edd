"""What reading a compressed stream would cost: µs per event to inflate a 500-token Responses
stream gzip-flushed per event (as a compressing gateway sends it), against parsing the same
events (`engine.sse`), in the same run. The engine asks for `Accept-Encoding: identity` and
inflates only what a server compresses anyway (docs/decisions.md).

    python benchmarks/inflate.py
"""

from __future__ import annotations

import time
import zlib

import orjson

from engine.content_encoding import Inflater
from engine.sse import SSEParser

EVENTS = 500
REPEATS = 20


def stream() -> list[bytes]:
    return [
        b"event: response.output_text.delta\ndata: "
        + orjson.dumps(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": f" tok{i}",
                "sequence_number": i,
            }
        )
        + b"\n\n"
        for i in range(EVENTS)
    ]


def best_us_per_event(work: object) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        best = min(best, (time.perf_counter() - started) / EVENTS * 1e6)
    return best


def main() -> None:
    events = stream()
    deflate = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    flushed = [deflate.compress(e) + deflate.flush(zlib.Z_SYNC_FLUSH) for e in events]

    def inflate() -> None:
        inflater = Inflater("gzip")
        for piece in flushed:
            inflater.feed(piece)

    def parse() -> None:
        parser = SSEParser()
        for event in events:
            parser.feed(event)

    inflate_us, parse_us = best_us_per_event(inflate), best_us_per_event(parse)
    plain, packed = sum(map(len, events)), sum(map(len, flushed))
    print(f"inflate (gzip, flushed per event): {inflate_us:.3f} µs/event (min of {REPEATS})")
    print(f"parse the same events (engine.sse, one event a chunk): {parse_us:.3f} µs/event")
    print(f"inflate / parse: {inflate_us / parse_us:.2f}; bytes {plain:,} -> {packed:,}")


if __name__ == "__main__":
    main()
