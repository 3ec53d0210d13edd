"""Record a real server's Prometheus /metrics text, idle and with streams in flight.

    python tests/real_servers/record_metrics.py --base-url http://127.0.0.1:8080/v1 \
        --name llama-server

Writes `metrics/<name>-idle.txt` (before any request) and `metrics/<name>-busy.txt` (taken once
every one of `--streams` streaming chat requests has received its first chunk, so they are all
still being decoded). `tests/test_servermetrics.py` serves both back to the scraper.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent / "metrics"
PROMPT = "Write a short story about a lighthouse."


async def record(base_url: str, name: str, model: str, streams: int, tokens: int) -> None:
    root = base_url.rstrip("/").removesuffix("/v1")
    HERE.mkdir(exist_ok=True)
    async with aiohttp.ClientSession() as session:

        async def scrape(kind: str) -> None:
            async with session.get(f"{root}/metrics") as resp:
                resp.raise_for_status()
                text = await resp.text()
            out = HERE / f"{name}-{kind}.txt"
            out.write_text(text)
            print(f"{out}: {len(text.splitlines())} lines")

        await scrape("idle")
        started = 0
        all_started = asyncio.Event()

        async def stream(i: int) -> None:
            nonlocal started
            body = {
                "model": model,
                "max_tokens": tokens,
                "stream": True,
                "temperature": 1.0,
                "messages": [{"role": "user", "content": f"{PROMPT} ({i})"}],
            }
            async with session.post(f"{base_url.rstrip('/')}/chat/completions", json=body) as resp:
                resp.raise_for_status()
                first = True
                async for _line in resp.content:
                    if first:
                        first = False
                        started += 1
                        if started == streams:
                            all_started.set()

        tasks = [asyncio.create_task(stream(i)) for i in range(streams)]
        async with asyncio.timeout(60):
            await all_started.wait()
        await scrape("busy")
        await asyncio.gather(*tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--name", required=True, help="server label, e.g. llama-server or vllm")
    ap.add_argument("--model", default="tiny-random-llama")
    ap.add_argument("--streams", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args()
    asyncio.run(record(args.base_url, args.name, args.model, args.streams, args.max_tokens))


if __name__ == "__main__":
    main()
