"""Calibration: how late does the load tester read what the server wrote?

A TTFT is only as good as the client that stamps it. This runs a stamping server in its own
process: a few lines of raw asyncio HTTP/1.1 + SSE (Responses dialect, no aiohttp.web, no
engine code, so it shares nothing with the client) that records `perf_counter_ns()` just
before it writes each request's first text delta. `perf_counter_ns` is CLOCK_MONOTONIC on
Linux, one clock for every process, so for every request

    read delay = (client's first-token arrival stamp) - (server's first-token write stamp)

is the client's own error (plus the loopback hop), whatever the server's pacing accuracy.
The report puts the bench's own in-run estimate beside it (the canary stream's read delay,
see `canary.py`) and the self-check's verdict, so the two can be compared on the same run.

    python -m engine.loadtest.calibrate --streams 500 --ttft-ms 200 --itl-ms 20 --tokens 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from engine.loadtest.config import AUTO_WORKERS, LoadConfig
from engine.loadtest.metrics import RequestRecord, stats
from engine.loadtest.workers import run_load
from engine.runtime import run_async, start_ready_process

READY = "calibration server on port "
_DELTA = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"tok "}\n\n'
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class StampServer:
    """Paces Responses streams and remembers when each first delta was written."""

    def __init__(self, ttft_s: float, itl_s: float) -> None:
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.first_write_ns: dict[str, int] = {}
        self._ids = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:  # keep-alive: many requests per connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = orjson.loads(await reader.readexactly(length)) if length else {}
                await self._stream(writer, int(body.get("max_output_tokens") or 16))
        writer.close()

    async def _stream(self, writer: asyncio.StreamWriter, tokens: int) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._ids += 1
        rid = f"cal_{self._ids}"
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nx-request-id: " + rid.encode() + b"\r\n\r\n"
        )
        writer.write(
            _chunk(
                b'event: response.created\ndata: {"type":"response.created",'
                b'"response":{"id":"' + rid.encode() + b'","status":"in_progress"}}'
                b"\n\n"
            )
        )
        for i in range(tokens):
            delay = start + self.ttft_s + i * self.itl_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == 0:
                self.first_write_ns[rid] = time.perf_counter_ns()
            writer.write(_chunk(_DELTA))
        usage = {"input_tokens": 1, "output_tokens": tokens, "total_tokens": tokens + 1}
        done = {
            "type": "response.completed",
            "response": {"id": rid, "status": "completed", "output": [], "usage": usage},
        }
        writer.write(_chunk(b"event: response.completed\ndata: " + orjson.dumps(done) + b"\n\n"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def serve(ttft_ms: float, itl_ms: float) -> dict[str, int]:
    """Serve until stdin closes; returns the first-write stamps by request id."""
    server = StampServer(ttft_ms / 1000, itl_ms / 1000)
    tcp = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=4096)
    print(READY + str(tcp.sockets[0].getsockname()[1]), flush=True)  # noqa: T201
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    tcp.close()
    return server.first_write_ns


def read_delays(
    origin_ns: int, records: list[RequestRecord], stamps: dict[str, int]
) -> list[float]:
    """Client first-token stamp minus server first-write stamp, per matched request (ms)."""
    out = []
    for r in records:
        written = stamps.get(r.request_id or "")
        if written is None or r.ttft_ms is None:
            continue
        read_ns = origin_ns + r.intended_s * 1e9 + r.ttft_ms * 1e6
        out.append((read_ns - written) / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.loadtest.calibrate")
    add = parser.add_argument
    add("--streams", type=int, default=500)
    add("--ttft-ms", type=float, default=200.0)
    add("--itl-ms", type=float, default=20.0)
    add("--tokens", type=int, default=100)
    add("--duration", type=float, default=10.0)
    add("--warmup", type=float, default=3.0)
    add(
        "--workers",
        type=lambda v: AUTO_WORKERS if v == "auto" else int(v),
        default=AUTO_WORKERS,
        help="client processes (default auto, as `stream-engine bench`)",
    )
    add("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        stamps = run_async(serve(args.ttft_ms, args.itl_ms))
        args.serve.write_bytes(orjson.dumps(stamps))
        return 0
    stamps_path = Path(f"/tmp/stream-engine-calibrate-{time.time_ns()}.json")  # noqa: S108
    argv_server = [
        sys.executable,
        "-m",
        "engine.loadtest.calibrate",
        "--serve",
        str(stamps_path),
        "--ttft-ms",
        str(args.ttft_ms),
        "--itl-ms",
        str(args.itl_ms),
    ]
    proc, port_text = start_ready_process(argv_server, READY, 60.0, stdin_pipe=True)
    with proc:
        assert proc.stdin is not None  # noqa: S101 - stdin_pipe
        port = int(port_text)
        config = LoadConfig(
            f"http://127.0.0.1:{port}/v1",
            model="calibration",
            concurrency=args.streams,
            output_tokens=args.tokens,
            input_tokens=8,
            duration_s=args.duration,
            warmup_s=args.warmup,
            workers=args.workers,
        )
        result = run_async(run_load(config))
        proc.stdin.close()
        proc.wait(30)
    stamps = orjson.loads(stamps_path.read_bytes())
    stamps_path.unlink()
    doc = result.summary()
    delays = read_delays(result.origin_ns, result.measured, stamps)
    report = {
        "streams": args.streams,
        "workers": result.config.workers,
        "completed": doc["completed"],
        "failed": doc["failed"],
        "ttft_ms": doc["ttft_ms"],
        "client_read_delay_ms": stats(np.asarray(delays)),
        "canary_read_delay_ms": doc["client"]["read_delay_ms"],
        "loop_lag_ms": doc["client"]["loop_lag_ms"],
        "verdict": doc["client"]["verdict"],
        "bottleneck": doc["client"]["bottleneck"],
        "busy_cpu_percent": [w["busy_cpu_percent"] for w in doc["client"]["workers"]],
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
