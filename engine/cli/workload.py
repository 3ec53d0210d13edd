"""bench's workload flags (docs/workloads.md): what the requests are and when they leave.

Lengths take a number, a distribution or a histogram file; `--rate` a number or a piecewise
series; a dataset, a trace, shared prefixes, conversations and cancellation each have their
own flags. The values are checked here, before the first request, so a mistyped spec is one
line on the console rather than a failure in every worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError
from engine.loadtest.search import STEP_S

if TYPE_CHECKING:
    import argparse

__all__ = ["add_search_arguments", "add_workload_arguments", "rate_argument", "workload_fields"]

DEFAULT_INPUT_TOKENS = 128
DEFAULT_OUTPUT_TOKENS = 64


def add_workload_arguments(req: argparse._ArgumentGroup, shape: argparse._ArgumentGroup) -> None:
    """The workload flags: lengths and sources among the requests' flags (`req`), arrivals,
    conversations and cancellation among the load shape's (`shape`)."""
    req.add_argument(
        "--input-tokens",
        default=str(DEFAULT_INPUT_TOKENS),
        metavar="SPEC",
        help="each prompt's length in tokens: a number, a uniform range 256-1024, "
        "mean=512,stdev=128[,min=32,max=2048], or a histogram file (.json/.csv of "
        "length,count) (default %(default)s)",
    )
    req.add_argument(
        "--output-tokens",
        default=None,
        metavar="SPEC",
        help="each answer's length, as --input-tokens: the cap, and asked for exactly unless "
        "--no-ignore-eos; with --dataset and no length given, each recorded answer's "
        f"(default {DEFAULT_OUTPUT_TOKENS})",
    )
    req.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH",
        help="a tokenizer.json: prompt lengths in its true tokens (pip install "
        "'stream-engine[workloads]'; default: one token per word, as the mock counts)",
    )
    req.add_argument(
        "--dataset",
        default=None,
        metavar="PATH",
        help="prompts from a file: ShareGPT JSON, chat-messages JSONL, Batch JSONL, or a "
        "plain-text corpus cut to --input-tokens (default: synthetic prompts)",
    )
    req.add_argument(
        "--shared-prefix-tokens",
        type=int,
        default=0,
        metavar="K",
        help="every prompt starts with a K-token system prompt shared by its group "
        "(default 0: none)",
    )
    req.add_argument(
        "--prefix-groups",
        type=int,
        default=1,
        metavar="N",
        help="with --shared-prefix-tokens: N different system prompts (default 1)",
    )
    shape.add_argument(
        "--trace",
        default=None,
        metavar="PATH",
        help="replay a trace's arrival times and lengths (Mooncake JSONL, BurstGPT CSV; "
        "docs/workloads.md) (default: none)",
    )
    shape.add_argument(
        "--trace-speedup",
        type=float,
        default=1.0,
        metavar="X",
        help="run the trace's clock X times faster (default 1)",
    )
    shape.add_argument(
        "--turns",
        type=int,
        default=1,
        metavar="N",
        help="multi-turn sessions of N turns, each carrying the answers before it; an "
        "open loop's --rate then starts sessions (default 1)",
    )
    shape.add_argument(
        "--think-time",
        type=float,
        default=0.0,
        metavar="S",
        help="a session's pause between an answer and its next turn (default 0)",
    )
    shape.add_argument(
        "--cancel-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="this share (0-1) of requests is cancelled by the client (default 0)",
    )
    shape.add_argument(
        "--cancel-after",
        type=float,
        default=1.0,
        metavar="S",
        help="with --cancel-rate: cancel this long after the send (default 1)",
    )


def add_search_arguments(shape: argparse._ArgumentGroup) -> None:
    """The SLO search's flags (engine.loadtest.search)."""
    shape.add_argument(
        "--search",
        choices=["rate", "concurrency"],
        default=None,
        help="find the highest rate (or concurrency) whose goodput meets --slo: short steps, "
        "bisected (docs/workloads.md; default: no search)",
    )
    shape.add_argument(
        "--search-step",
        type=float,
        default=STEP_S,
        metavar="S",
        help="with --search: each step's measured seconds (default %(default)g)",
    )


def rate_argument(text: str) -> float | str:
    """`--rate`: requests per second, or a piecewise series ('10:30s,50:60s', ramps
    '10-50:60s') kept as text and parsed with the rest of the load."""
    try:
        return float(text)
    except ValueError:
        return text


def workload_fields(args: argparse.Namespace) -> dict[str, Any]:
    """LoadConfig's workload fields (the rate too: a number or a series) from the flags,
    each spec checked now."""
    from engine.loadtest.lengths import parse_lengths  # noqa: PLC0415 - numpy for files only

    fields: dict[str, Any] = {}
    for name, default in (("input", DEFAULT_INPUT_TOKENS), ("output", DEFAULT_OUTPUT_TOKENS)):
        text = getattr(args, f"{name}_tokens")
        if text is None:
            fields[f"{name}_tokens"] = default
            continue
        spec = parse_lengths(text)
        # A number is the fixed length as before; an explicit output number still overrides
        # a dataset's recorded answers, so it is kept as a spec then.
        keep = spec.fixed is None or (name == "output" and args.dataset)
        fields[f"{name}_lengths"] = text if keep else None
        fields[f"{name}_tokens"] = spec.fixed or max(1, round(spec.mean))
    rate = args.rate  # a number, or a series (`rate_argument`)
    fields["rate"], fields["rate_series"] = (None, rate) if isinstance(rate, str) else (rate, None)
    if args.trace and rate is not None:
        raise ConfigError("--trace sets the arrivals: drop --rate")
    return {
        **fields,
        "tokenizer": args.tokenizer,
        "dataset": args.dataset,
        "shared_prefix_tokens": args.shared_prefix_tokens,
        "prefix_groups": args.prefix_groups,
        "turns": args.turns,
        "think_s": args.think_time,
        "trace_file": args.trace,
        "trace_speedup": args.trace_speedup,
        "cancel_rate": args.cancel_rate,
        "cancel_after_s": args.cancel_after,
    }
