"""The canary stream: the client's own read delay, measured during every run.

A TTFT is only as good as the moment the client reads the first token, and loop lag cannot
see that moment: a ticker wakes at the start of a loop iteration, while a stream's bytes wait
behind every other stream woken in the same iteration (and behind GC pauses and the OS). So
each worker also reads one extra stream, through its own Engine on the same event loop, from
a tiny server in a process of its own. That server writes an event every few ms and puts
`time.perf_counter_ns()` (CLOCK_MONOTONIC on Linux: one clock for every process) in it just
before the write, so for every canary event

    read delay = the engine's arrival stamp - the server's write stamp

is exactly the error the same path adds to every TTFT in that worker (plus the loopback hop).
This file runs as a script (`python engine/loadtest/canary.py`) with stdlib imports only, so
the server starts in a fraction of a second; `CanaryProcess` starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

INTERVAL_MS = 2.0  # 500 events/s per worker: ~1% of a core, 5,000 samples in 10 s
MAX_STREAM_S = 24 * 3600.0  # a forgotten canary ends by itself
READY = "canary on port "
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
)
_CREATED = (
    b'event: response.created\ndata: {"type":"response.created","response":'
    b'{"id":"canary","status":"in_progress"}}\n\n'
)
_DELTA = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"c","t":%d}\n\n'
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    interval_s: float,
    streams: dict[asyncio.StreamWriter, asyncio.Task[Any]],
) -> None:
    """One request, one endless stream of stamped deltas until the client goes away."""
    task = asyncio.current_task()
    if task is not None:
        streams[writer] = task
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, OSError):
        head = await reader.readuntil(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":", 1)[1]))
        writer.write(_HEAD + _chunk(_CREATED))
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        while not writer.is_closing() and loop.time() - start < MAX_STREAM_S:
            tick += 1
            delay = start + tick * interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(_chunk(_DELTA % time.perf_counter_ns()))  # stamp, then write at once
            if writer.transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()  # a client that stopped reading: do not buffer forever
    streams.pop(writer, None)
    writer.close()


async def serve(interval_ms: float) -> None:
    """Serve canary streams until stdin closes (the parent's end of the pipe)."""
    interval_s = interval_ms / 1000
    streams: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, interval_s, streams), "127.0.0.1", 0, backlog=1024
    )
    print(READY + str(server.sockets[0].getsockname()[1]), flush=True)  # noqa: T201
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()
    # Let handlers end by themselves (is_closing() at their next tick): a handler task that
    # asyncio.run cancels makes asyncio.streams log a CancelledError traceback.
    for writer in list(streams):
        writer.transport.abort()
    if streams:
        await asyncio.wait(list(streams.values()), timeout=1.0)


class CanaryProcess:
    """`with CanaryProcess() as canary:` a canary server in its own process at `canary.url`."""

    def __init__(self, interval_ms: float = INTERVAL_MS, startup_timeout_s: float = 20.0) -> None:
        self.interval_ms = interval_ms
        self.url = ""
        self._timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        from engine.runtime import start_ready_process  # noqa: PLC0415 - the script: stdlib only

        argv = [sys.executable, "-I", str(Path(__file__)), "--interval-ms", str(self.interval_ms)]
        # Its own process group: a terminal's Ctrl-C is the bench's; the canary ends when its
        # stdin closes, which the bench's death does too.
        try:
            self._proc, port = start_ready_process(argv, READY, self._timeout_s, stdin_pipe=True)
        except RuntimeError as exc:
            raise RuntimeError(f"canary server did not start: {exc}") from None
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the server's signal to stop
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def main(argv: list[str]) -> int:
    interval_ms = INTERVAL_MS
    if len(argv) == 2 and argv[0] == "--interval-ms":
        interval_ms = float(argv[1])
    asyncio.run(serve(interval_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
