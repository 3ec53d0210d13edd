"""The whole client pipeline over loopback: CPU per event and reported TTFT, engine vs peers.

The mock endpoint runs in its own process (`MockProcess`); every client run is a fresh
subprocess of this file (`--child CLIENT`), so its CPU is measured alone (`process_time()`
inside the client process) and no client's imports or allocations touch another's. Clients:

  engine-stream  `Engine.stream(body)` + `TextCollector` per event (the budget's figure);
                 compiled when a build of the hot path is there (`python -m engine.build`)
  engine-stream-pure  the same, STREAM_ENGINE_PURE_PYTHON=1 (figure "cpu" only): both paths
                 side by side in one run (the same code twice when nothing is built)
  engine-run     `Engine.run(body, handlers=[TextCollector()])`
  openai         `AsyncOpenAI(...).responses.create(stream=True)`, text from delta events
  httpx-sse      httpx + `aconnect_sse` + `orjson.loads` of every event
  aiohttp-naive  `async for line in resp.content`, `orjson.loads` of every `data: ` line
  floor          aiohttp `iter_any()` counting `\\n\\n`: bytes only, the floor

Figure "cpu": 500-token Responses streams, 50 workers in a closed loop for a few seconds
after a warm-up round that opens the connections; client CPU µs per event and events/s.
Figure "ttft": N streams at once (50 → 10,000, after a warm-up round) against a mock with
TTFT 200 ms / ITL 20 ms: reported TTFT minus 200 ms, per client, until each client saturates.

    python benchmarks/pipeline.py [--figure cpu|ttft|all] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import random
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import percentile, raise_nofile, run_json_child, summary
from engine.mock import MockConfig, MockProcess

CLIENTS = ("engine-stream", "engine-run", "openai", "httpx-sse", "aiohttp-naive", "floor")
ENGINE = "engine-stream"
PURE = "-pure"  # a client's name with this suffix runs the engine as pure Python
ENGINE_PURE = ENGINE + PURE
CPU_CLIENTS = (ENGINE, ENGINE_PURE, *CLIENTS[1:])
NAIVE = "aiohttp-naive"
DELTA = "response.output_text.delta"
BODY = {"model": "mock-model", "input": "bench"}
CONNECTS_IN_FLIGHT = 1000  # warm-up only: 10,000 SYNs at once overflow the accept queue
SATURATED_ERROR_MS = 1000.0  # a client whose median TTFT is 1 s late has clearly saturated
TICKS = os.sysconf("SC_CLK_TCK")

# One stream: (events seen, text deltas seen or None, reported first-token time in ns or None)
Outcome = tuple[int, int | None, int | None]
StreamFn = Callable[[], Awaitable[Outcome]]


# --- the clients (child process side) --------------------------------------------------------


@contextlib.asynccontextmanager
async def engine_client(name: str, url: str, limit: int) -> AsyncIterator[StreamFn]:
    from engine import Engine  # noqa: PLC0415 - each child imports only its own client
    from engine.handlers import TextCollector  # noqa: PLC0415

    async with Engine(base_url=url, api_key="x", max_connections=limit) as engine:

        async def stream() -> Outcome:
            collector = TextCollector()
            first = None
            events = tokens = 0
            async for event in engine.stream(BODY):
                collector(event)
                events += 1
                if event.text_delta:
                    tokens += 1
                    if first is None:
                        first = event.received_ns  # the arrival time the engine reports
            return events, tokens, first

        async def run() -> Outcome:
            result = await engine.run(BODY, handlers=[TextCollector()])
            return result.events, len(result.token_times_ns), result.first_token_ns

        yield stream if name.removesuffix(PURE) == ENGINE else run


@contextlib.asynccontextmanager
async def openai_client(url: str, limit: int) -> AsyncIterator[StreamFn]:
    import httpx2  # noqa: PLC0415 - openai 3.x's own transport (a fork of httpx)
    import openai  # noqa: PLC0415
    from openai.types.responses import ResponseTextDeltaEvent  # noqa: PLC0415

    # The SDK's own default client class, with a pool as large as the run's concurrency.
    http = openai.DefaultAsyncHttpxClient(
        limits=httpx2.Limits(max_connections=limit, max_keepalive_connections=limit),
        timeout=httpx2.Timeout(120.0),
    )
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, http_client=http)

    async def stream() -> Outcome:
        parts: list[str] = []
        first = None
        events = 0
        async for event in await client.responses.create(
            model=BODY["model"], input=BODY["input"], stream=True
        ):
            events += 1
            if isinstance(event, ResponseTextDeltaEvent):
                parts.append(event.delta)
                if first is None:
                    first = time.perf_counter_ns()
        return events, len(parts), first

    try:
        yield stream
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def httpx_sse_client(url: str, limit: int) -> AsyncIterator[StreamFn]:
    import httpx  # noqa: PLC0415
    import orjson  # noqa: PLC0415
    from httpx_sse import aconnect_sse  # noqa: PLC0415

    content = orjson.dumps({**BODY, "stream": True})
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        timeout=httpx.Timeout(120.0),
    ) as client:

        async def stream() -> Outcome:
            parts: list[str] = []
            first = None
            events = 0
            async with aconnect_sse(
                client, "POST", url + "/responses", content=content, headers=headers
            ) as source:
                async for sse in source.aiter_sse():
                    data = orjson.loads(sse.data)
                    events += 1
                    if data.get("type") == DELTA:
                        parts.append(data["delta"])
                        if first is None:
                            first = time.perf_counter_ns()
            return events, len(parts), first

        yield stream


@contextlib.asynccontextmanager
async def aiohttp_client(name: str, url: str, limit: int) -> AsyncIterator[StreamFn]:
    import aiohttp  # noqa: PLC0415
    import orjson  # noqa: PLC0415

    content = orjson.dumps({**BODY, "stream": True})
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def naive() -> Outcome:
            parts: list[str] = []
            first = None
            events = 0
            async with session.post(url + "/responses", data=content, headers=headers) as resp:
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        data = orjson.loads(line[6:])
                        events += 1
                        if data.get("type") == DELTA:
                            parts.append(data["delta"])
                            if first is None:
                                first = time.perf_counter_ns()
            return events, len(parts), first

        async def floor() -> Outcome:
            first = None
            events = 0
            async with session.post(url + "/responses", data=content, headers=headers) as resp:
                async for chunk in resp.content.iter_any():
                    events += chunk.count(b"\n\n")
                    if first is None and b"output_text.delta" in chunk:
                        first = time.perf_counter_ns()
            return events, None, first

        yield naive if name == NAIVE else floor


def client_for(name: str, url: str, limit: int) -> contextlib.AbstractAsyncContextManager[StreamFn]:
    if name.startswith("engine"):
        return engine_client(name, url, limit)
    if name == "openai":
        return openai_client(url, limit)
    if name == "httpx-sse":
        return httpx_sse_client(url, limit)
    return aiohttp_client(name, url, limit)


@dataclass
class Tally:
    """What the measured phase of one child saw."""

    events: int = 0
    tokens: int = 0
    ok: int = 0
    failed: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def one(stream: StreamFn, tally: Tally, connecting: asyncio.Semaphore | None = None) -> None:
    t0 = time.perf_counter_ns()
    try:
        if connecting is None:
            events, tokens, first = await stream()
        else:
            async with connecting:
                events, tokens, first = await stream()
    except Exception as exc:
        tally.failed += 1
        if len(tally.errors) < 5:
            tally.errors.append(repr(exc)[:300])
        return
    tally.ok += 1
    tally.events += events
    tally.tokens += tokens or 0
    if first is not None:
        tally.ttft_ms.append((first - t0) / 1e6)


async def child_main(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up (opens the pool), then the measured phase: `streams` workers, each running
    `rounds` streams or until `seconds` have passed, after a random start in [0, stagger)."""
    async with client_for(args.child, args.url, args.streams) as stream:
        warm = Tally()
        t_warm = time.perf_counter()
        connecting = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
        await asyncio.gather(*(one(stream, warm, connecting) for _ in range(args.streams)))
        warm_s = time.perf_counter() - t_warm
        tally = Tally()
        rng = random.Random(1)
        deadline = time.perf_counter() + args.seconds if args.seconds else None

        async def worker(delay: float) -> None:
            if delay:
                await asyncio.sleep(delay)
            for _ in range(args.rounds or 1_000_000_000):
                await one(stream, tally)
                if deadline is not None and time.perf_counter() >= deadline:
                    return

        profile = cProfile.Profile() if args.profile else None
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, t0 = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        await asyncio.gather(*(worker(rng.random() * args.stagger) for _ in range(args.streams)))
        if profile is not None:
            profile.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {
        "client": args.child,
        "compiled": _engine_compiled() if args.child.startswith("engine") else None,
        "streams": args.streams,
        "events": tally.events,
        "tokens": tally.tokens,
        "ok": tally.ok,
        "failed": tally.failed,
        "errors": tally.errors,
        "cpu_s": cpu,
        "user_s": ru1.ru_utime - ru0.ru_utime,
        "sys_s": ru1.ru_stime - ru0.ru_stime,
        "wall_s": wall,
        "warmup_s": warm_s,
        "warmup_failed": warm.failed,
        "warmup_errors": warm.errors,
        "ttft_ms": tally.ttft_ms,
    }
    if profile is not None:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        out["profile"] = text.getvalue()
    return out


def _engine_compiled() -> bool:
    import engine  # noqa: PLC0415 - loaded by the client already

    return engine.COMPILED


# --- the parent side -------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (the mock), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_child(
    client: str,
    url: str,
    *,
    streams: int,
    seconds: float = 0.0,
    rounds: int = 0,
    stagger: float = 0.0,
    timeout_s: float = 120.0,
    profile: bool = False,
) -> dict[str, Any]:
    """One client run in a fresh interpreter; its JSON result, or `{"timed_out": True}`."""
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        client,
        "--url",
        url,
        "--streams",
        str(streams),
        "--seconds",
        repr(seconds),
        "--rounds",
        str(rounds),
        "--stagger",
        repr(stagger),
    ]
    if profile:
        argv.append("--profile")
    result = run_json_child(argv, pure=client.endswith(PURE), timeout_s=timeout_s)
    return {"client": client, **result}


def cpu_figure(
    clients: tuple[str, ...] = CPU_CLIENTS,
    *,
    streams: int = 50,
    tokens: int = 500,
    seconds: float = 3.0,
    repeats: int = 3,
) -> dict[str, Any]:
    """Client CPU µs per event and events/s, each client `repeats` times, round-robin."""
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
    config = MockConfig(ttft_ms=0, itl_ms=0, output_tokens=tokens)
    with MockProcess(config) as mock:
        for _ in range(repeats):
            for client in clients:
                server0 = process_cpu_s(mock.pid)
                res = run_child(
                    client,
                    mock.base_url,
                    streams=streams,
                    seconds=seconds,
                    timeout_s=60 + 30 * seconds,
                )
                res["server_cpu_s"] = process_cpu_s(mock.pid) - server0
                runs[client].append(res)
    per_client: dict[str, Any] = {}
    for client, results in runs.items():
        good = [r for r in results if r.get("events")]
        per_client[client] = {
            "us_per_event": summary([r["cpu_s"] / r["events"] * 1e6 for r in good])
            if good
            else None,
            "events_per_s": summary([r["events"] / r["wall_s"] for r in good], 0) if good else None,
            "server_us_per_event": summary([r["server_cpu_s"] / r["events"] * 1e6 for r in good])
            if good
            else None,
            "compiled": next((r["compiled"] for r in good), None),
            "events": sum(r["events"] for r in good),
            "streams_ok": sum(r["ok"] for r in good),
            "streams_failed": sum(r.get("failed", 0) for r in good),
            "tokens_exact": all(r["tokens"] in (0, r["ok"] * tokens) for r in good),
            "errors": [e for r in results for e in r.get("errors", [])][:5]
            + [
                f"{k}: {r[k]}"
                for r in results
                for k in ("timed_out", "crashed", "stderr")
                if k in r
            ][:5],
        }
    out: dict[str, Any] = {
        "streams": streams,
        "tokens_per_stream": tokens,
        "seconds_per_run": seconds,
        "repeats": repeats,
        "clients": per_client,
    }
    out["ratios"] = cpu_ratios(per_client)
    return out


def cpu_ratios(per_client: dict[str, Any]) -> dict[str, Any]:
    """Peer CPU / engine CPU per event (>1: the engine uses less), min and median."""
    mine = per_client.get(ENGINE, {}).get("us_per_event")
    if not mine:
        return {}
    ratios: dict[str, Any] = {}
    for client, res in per_client.items():
        if client != ENGINE and res["us_per_event"]:
            ratios[client] = {
                s: round(res["us_per_event"][s] / mine[s], 2) for s in ("min", "median")
            }
    naive = per_client.get(NAIVE, {}).get("us_per_event")
    ratios["budget"] = {
        "engine_us_per_event": {
            "limit": 1.5,
            "min": mine["min"],
            "median": mine["median"],
            "holds": mine["min"] <= 1.5,
        },
    }
    if naive:
        share = {s: round(mine[s] / naive[s], 3) for s in ("min", "median")}
        ratios["budget"]["engine_over_naive"] = {
            "limit": 0.4,
            "compiled": per_client[ENGINE].get("compiled"),
            **share,
            "holds": share["min"] <= 0.4,
        }
        pure = per_client.get(ENGINE_PURE, {}).get("us_per_event")
        if pure:
            share = {s: round(pure[s] / naive[s], 3) for s in ("min", "median")}
            ratios["budget"]["engine_pure_over_naive"] = {
                "limit": 0.4,
                **share,
                "holds": share["min"] <= 0.4,
            }
    return ratios


def ttft_stats(res: dict[str, Any], true_ms: float) -> dict[str, Any]:
    """Reported TTFT minus the server's configured TTFT, in ms."""
    errors = [t - true_ms for t in res.get("ttft_ms", [])]
    out: dict[str, Any] = {
        "ok": res.get("ok", 0),
        "failed": res.get("failed", 0),
        "wall_s": round(res.get("wall_s", 0.0), 2),
        "cpu_s": round(res.get("cpu_s", 0.0), 2),
        "warmup_s": round(res.get("warmup_s", 0.0), 2),
    }
    if errors:
        out |= {f"error_ms_p{q}": round(percentile(errors, q), 2) for q in (50, 90, 99)}
        out["error_ms_max"] = round(max(errors), 2)
    for key in ("timed_out", "crashed", "stderr", "errors", "warmup_errors"):
        if res.get(key):
            out[key] = res[key]
    return out


def saturated(stats: dict[str, Any], streams: int) -> str | None:
    """Why a client should not be run at higher concurrency, or None."""
    if stats.get("timed_out"):
        return "timed out"
    if stats.get("crashed"):
        return "crashed"
    if stats["failed"] > streams // 100:
        return f"{stats['failed']} of {streams} streams failed"
    if stats.get("error_ms_p50", 0.0) > SATURATED_ERROR_MS:
        return f"median TTFT {stats['error_ms_p50']:.0f} ms late"
    return None


def ttft_figure(
    clients: tuple[str, ...] = CLIENTS,
    *,
    levels: tuple[int, ...] = (50, 200, 1000, 3000, 10000),
    ttft_ms: float = 200.0,
    itl_ms: float = 20.0,
    tokens: int = 5,
    max_point_s: float = 150.0,
) -> dict[str, Any]:
    """Reported TTFT error against concurrency; a saturated client is skipped above."""
    config = MockConfig(ttft_ms=ttft_ms, itl_ms=itl_ms, output_tokens=tokens)
    points: dict[str, dict[str, Any]] = {c: {} for c in clients}
    skipped: dict[str, str] = {}
    with MockProcess(config) as mock:
        for streams in levels:
            for client in clients:
                if client in skipped:
                    points[client][str(streams)] = {"skipped": skipped[client]}
                    continue
                res = run_child(
                    client,
                    mock.base_url,
                    streams=streams,
                    rounds=1,
                    timeout_s=min(max_point_s, 30 + streams * 0.02),
                )
                stats = ttft_stats(res, ttft_ms)
                points[client][str(streams)] = stats
                why = saturated(stats, streams)
                if why is not None:
                    skipped[client] = f"saturated at {streams} streams ({why})"
                print(
                    f"ttft {client} @ {streams}: {stats.get('error_ms_p50')} ms p50 "
                    f"{stats.get('error_ms_p99')} p99 {why or ''}",
                    file=sys.stderr,
                )
    return {
        "ttft_ms": ttft_ms,
        "itl_ms": itl_ms,
        "tokens_per_stream": tokens,
        "levels": list(levels),
        "clients": points,
        "saturated": skipped,
        "saturation_rule": f"timed out, >1% failed, or median error > "
        f"{SATURATED_ERROR_MS:.0f} ms: not run at higher levels",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figure", choices=["cpu", "ttft", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--child", choices=CPU_CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stagger", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_nofile()
    if args.child:
        import uvloop  # noqa: PLC0415 - every client runs on the same loop

        print(json.dumps(uvloop.run(child_main(args))))
        return 0
    out: dict[str, Any] = {}
    if args.figure in ("cpu", "all"):
        out["cpu"] = (
            cpu_figure(streams=5, tokens=50, seconds=0.2, repeats=1) if args.quick else cpu_figure()
        )
    if args.figure in ("ttft", "all"):
        out["ttft"] = (
            ttft_figure(levels=(5, 20), ttft_ms=20, itl_ms=5, tokens=2)
            if args.quick
            else ttft_figure()
        )
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
