"""How exact is the TTFT each client reports? Measured minus configured, p50/p99, per client.

The mock (own process) answers after exactly 200 ms, then 50 tokens at 20 ms (50 tokens/s).
Each client (own process, see `pipeline.py`) opens its 500 connections in a warm-up round,
then runs 500 workers in a closed loop for a few seconds, each starting at a random offset in
one stream's length, so first tokens arrive while the client is busy with other streams'
deltas. Every stream's reported TTFT minus 200 ms is the error; the floor client (aiohttp
bytes, no parsing) shows what the server and the kernel add on their own.

    python benchmarks/ttft_accuracy.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import raise_nofile
from benchmarks.pipeline import CLIENTS, ENGINE, run_child, ttft_stats
from engine.mock import MockConfig, MockProcess


def run(
    clients: tuple[str, ...] = CLIENTS,
    *,
    streams: int = 500,
    ttft_ms: float = 200.0,
    itl_ms: float = 20.0,
    tokens: int = 50,
    seconds: float = 4.0,
) -> dict[str, Any]:
    """Every client against the same mock process, one after the other."""
    stream_s = (ttft_ms + itl_ms * (tokens - 1)) / 1000
    config = MockConfig(ttft_ms=ttft_ms, itl_ms=itl_ms, output_tokens=tokens)
    per_client: dict[str, Any] = {}
    with MockProcess(config) as mock:
        for client in clients:
            res = run_child(
                client,
                mock.base_url,
                streams=streams,
                seconds=seconds,
                stagger=stream_s,
                timeout_s=90 + 4 * seconds,
            )
            per_client[client] = ttft_stats(res, ttft_ms) | {"samples": len(res.get("ttft_ms", ()))}
            print(
                f"accuracy {client}: {per_client[client].get('error_ms_p50')} ms p50 "
                f"{per_client[client].get('error_ms_p99')} p99",
                file=sys.stderr,
            )
    mine = per_client.get(ENGINE, {})
    ratios = {
        client: {
            q: round(res[q] / mine[q], 2)
            for q in ("error_ms_p50", "error_ms_p99")
            if res.get(q) and mine.get(q)
        }
        for client, res in per_client.items()
        if client != ENGINE
    }
    return {
        "streams": streams,
        "ttft_ms": ttft_ms,
        "itl_ms": itl_ms,
        "tokens_per_stream": tokens,
        "seconds": seconds,
        "clients": per_client,
        "error_ratios_vs_engine": ratios,
    }


def quick() -> dict[str, Any]:
    return run(streams=10, ttft_ms=20, itl_ms=5, tokens=5, seconds=0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args()
    raise_nofile()
    print(json.dumps(quick() if args.quick else run(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
