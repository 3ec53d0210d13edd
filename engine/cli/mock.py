"""The `stream-engine mock` verb (also `python -m engine.mock`): flags <-> MockConfig, serving.

CLI defaults are a served model's (`engine.mock.config.SERVED_*`: TTFT 200 ms, ITL 20 ms, 128
tokens, no prefill cost, the same as bench's embedded mock), unlike MockConfig's test defaults
(0/0, 16 tokens); `MockConfig.to_argv` spells every field so MockProcess reproduces a
MockConfig exactly. The API key travels in the `MOCK_API_KEY` environment variable, never argv.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from engine.errors import ConfigError
from engine.mock.config import (
    CLOSE_MODES,
    DISTRIBUTIONS,
    LIMIT_ENDINGS,
    PREFIX_CACHE_TOKENS,
    REASONING_FIELDS,
    SERVED_ITL_MS,
    SERVED_OUTPUT_TOKENS,
    SERVED_PREFILL_MS_PER_1K,
    SERVED_TTFT_MS,
    MockConfig,
    parse_fault_rates,
    parse_token_range,
)
from engine.mock.runners import MockServer
from engine.runtime import end_with_parent, raise_open_files_limit, run_async

API_KEY_ENV = "MOCK_API_KEY"
READY_LINE = "stream-engine mock listening on {url}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the mock's flags on `parser` (shared by the main CLI and `python -m`)."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    add("--port", type=int, default=8000, help="port; 0 picks a free one (default 8000)")
    add(
        "--ttft-ms",
        type=float,
        default=SERVED_TTFT_MS,
        help="time to first token, ms (default %(default)g)",
    )
    add(
        "--itl-ms",
        type=float,
        default=SERVED_ITL_MS,
        help="inter-token latency, ms (default %(default)g)",
    )
    add(
        "--prefill-ms-per-1k",
        type=float,
        default=SERVED_PREFILL_MS_PER_1K,
        metavar="MS",
        help="TTFT grows by MS per 1,000 input tokens not in the prefix cache (all of them "
        "without --prefix-cache), e.g. 50 (default %(default)g: one TTFT for every prompt)",
    )
    add(
        "--prefix-cache",
        action="store_true",
        help="cache prompts in blocks of 16 tokens, as vLLM and SGLang do: a shared prefix is "
        "reported as cached_tokens and skips the prefill (default off)",
    )
    add(
        "--prefix-cache-tokens",
        type=int,
        default=PREFIX_CACHE_TOKENS,
        metavar="N",
        help="the prefix cache's capacity, least recently used blocks evicted first "
        "(default %(default)d)",
    )
    add("--jitter", type=float, default=0.0, help="relative jitter, 0.1 = ±10%% (default 0)")
    add(
        "--itl-distribution",
        choices=DISTRIBUTIONS,
        default="constant",
        help="inter-token delay distribution with mean --itl-ms (default constant)",
    )
    add(
        "--output-tokens",
        default=str(SERVED_OUTPUT_TOKENS),
        metavar="N|MIN-MAX",
        help="the answer's own length: a request's cap (max_output_tokens, max_tokens) "
        "cuts it shorter, ignore_eos or min_tokens ask for the cap itself (default %(default)s)",
    )
    add(
        "--max-concurrency",
        type=int,
        default=None,
        help="concurrent generations; more requests queue FIFO (default unlimited)",
    )
    add(
        "--faults",
        default="",
        help="fault rates, e.g. 429=0.05,500=0.02,disconnect=0.02 (default none)",
    )
    add(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require this bearer token (default: ${API_KEY_ENV}; unset = no auth)",
    )
    add("--seed", type=int, default=0, help="seed of text, faults and jitter (default 0)")
    add(
        "--retry-after",
        type=float,
        default=0.05,
        help="seconds a 429 asks to wait (default %(default)g)",
    )
    add(
        "--limit-ending",
        choices=LIMIT_ENDINGS,
        default="incomplete",
        help="Responses stream cut by its cap: response.incomplete (OpenAI), "
        "response.completed with status incomplete (vllm), or completed "
        "(default incomplete)",
    )
    add(
        "--model",
        default="mock-model",
        help="model id listed by GET /v1/models (default %(default)s)",
    )
    add(
        "--close-after-response",
        choices=CLOSE_MODES,
        default="no",
        help="close the connection after each response: silent (headers say keep-alive, as "
        "llama-server) or announced (Connection: close) (default no)",
    )
    add(
        "--keepalive-timeout",
        type=float,
        default=None,
        metavar="S",
        help="close idle keep-alive connections after S seconds (uvicorn: 5; default aiohttp's)",
    )
    add(
        "--reasoning-tokens",
        type=int,
        default=0,
        metavar="N",
        help="N reasoning tokens before every chat and Responses answer (default 0)",
    )
    add(
        "--reasoning-field",
        choices=REASONING_FIELDS,
        default="reasoning_content",
        help="chat delta field of reasoning: reasoning_content (llama.cpp, DeepSeek) or "
        "reasoning (vLLM, Ollama) (default reasoning_content)",
    )
    add(
        "--reasoning-summary",
        action="store_true",
        help="Responses: reasoning as reasoning_summary_text events (OpenAI's hosted models) "
        "instead of reasoning_text (open-weight models, vLLM) (default off)",
    )


def config_from_args(args: argparse.Namespace) -> MockConfig:
    low, high = parse_token_range(args.output_tokens)
    return MockConfig(
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        prefill_ms_per_1k=args.prefill_ms_per_1k,
        prefix_cache=args.prefix_cache,
        prefix_cache_tokens=args.prefix_cache_tokens,
        jitter=args.jitter,
        itl_distribution=args.itl_distribution,
        output_tokens=low,
        output_tokens_max=high,
        max_concurrency=args.max_concurrency,
        faults=parse_fault_rates(args.faults),
        api_key=args.api_key or None,
        seed=args.seed,
        retry_after_s=args.retry_after,
        limit_ending=args.limit_ending,
        model=args.model,
        close_after_response=args.close_after_response,
        keepalive_timeout_s=args.keepalive_timeout,
        reasoning_tokens=args.reasoning_tokens,
        reasoning_field=args.reasoning_field,
        reasoning_summary=args.reasoning_summary,
    )


async def serve(config: MockConfig, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM; print the ready line once listening."""
    server = MockServer(config, host=host, port=port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(READY_LINE.format(url=server.base_url) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.stop()


def run(args: argparse.Namespace) -> int:
    """Serve the mock with the parsed flags; returns the process exit status."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        sys.stderr.write(f"stream-engine mock: {exc}\n")
        return 2
    raise_open_files_limit()  # thousands of open streams need thousands of descriptors
    end_with_parent()  # started by MockProcess (bench's embedded mock): never outlive it
    run_async(serve(config, args.host, args.port))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.mock", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
