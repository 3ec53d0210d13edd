"""bench's embedded mock: the flags that shape it and its start, when no --base-url is given.

It runs in its own process with the served model's latency model (`engine.mock.config`'s
`SERVED_*`), the same as `stream-engine mock`, so a number seen in one is the number seen in
the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.mock.config import (
    SERVED_ITL_MS,
    SERVED_OUTPUT_TOKENS,
    SERVED_PREFILL_MS_PER_1K,
    SERVED_TTFT_MS,
    parse_fault_rates,
)

if TYPE_CHECKING:
    import argparse
    from contextlib import ExitStack

    from rich.console import Console

__all__ = ["add_embedded_mock_arguments", "start_embedded_mock"]


def add_embedded_mock_arguments(parser: argparse.ArgumentParser) -> None:
    """The embedded mock's flags (each says its default)."""
    mock = parser.add_argument_group(
        "embedded mock (no --base-url; the latency model of `stream-engine mock`)"
    )
    mock.add_argument(
        "--mock-ttft-ms",
        type=float,
        default=SERVED_TTFT_MS,
        help="the mock's time to first token, ms (default %(default)g)",
    )
    mock.add_argument(
        "--mock-itl-ms",
        type=float,
        default=SERVED_ITL_MS,
        help="the mock's inter-token latency, ms (default %(default)g)",
    )
    mock.add_argument(
        "--mock-faults",
        default="",
        help="the mock's fault rates, e.g. 429=0.02,500=0.01 (default none)",
    )
    mock.add_argument(
        "--mock-reasoning-tokens",
        type=int,
        default=0,
        metavar="N",
        help="N reasoning tokens before every answer, paced like text (default 0)",
    )
    mock.add_argument(
        "--mock-prefill-ms-per-1k",
        type=float,
        default=SERVED_PREFILL_MS_PER_1K,
        metavar="MS",
        help="the mock's TTFT grows by MS per 1,000 uncached prompt tokens (default 0)",
    )
    mock.add_argument(
        "--mock-prefix-cache",
        action="store_true",
        help="the mock caches prompts' prefixes: a repeated prefix costs no prefill and is "
        "reported as cached tokens (default: off)",
    )
    mock.add_argument(
        "--mock-max-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="the mock generates N answers at once, the rest queue (default: no limit)",
    )


def start_embedded_mock(
    args: argparse.Namespace, console: Console, stack: ExitStack
) -> tuple[str, dict[str, Any]]:
    """The embedded mock in its own process until `stack` closes: its URL and its facts."""
    from engine.mock import MockConfig, MockProcess  # noqa: PLC0415 - only embedded

    mock_config = MockConfig(
        ttft_ms=args.mock_ttft_ms,
        itl_ms=args.mock_itl_ms,
        output_tokens=SERVED_OUTPUT_TOKENS,
        faults=parse_fault_rates(args.mock_faults),
        reasoning_tokens=args.mock_reasoning_tokens,
        prefill_ms_per_1k=args.mock_prefill_ms_per_1k,
        prefix_cache=args.mock_prefix_cache,
        max_concurrency=args.mock_max_concurrency,
    )
    base_url = stack.enter_context(MockProcess(mock_config)).base_url
    facts = {
        "embedded_mock": {
            "ttft_ms": args.mock_ttft_ms,
            "itl_ms": args.mock_itl_ms,
            "output_tokens": SERVED_OUTPUT_TOKENS,
            "faults": args.mock_faults,
            "reasoning_tokens": args.mock_reasoning_tokens,
            "prefill_ms_per_1k": args.mock_prefill_ms_per_1k,
            "prefix_cache": args.mock_prefix_cache,
            "max_concurrency": args.mock_max_concurrency,
        }
    }
    reasoning = (
        f", {args.mock_reasoning_tokens} reasoning tokens first"
        if args.mock_reasoning_tokens
        else ""
    )
    console.print(
        f"(no --base-url: mock endpoint in its own process at {base_url}, "
        f"TTFT {args.mock_ttft_ms:g} ms, ITL {args.mock_itl_ms:g} ms, answers of "
        f"{SERVED_OUTPUT_TOKENS} tokens{reasoning})"
    )
    return base_url, facts
