"""Command line: `stream-engine run | mock | bench | compare | batch`.

Imports everything; none imports it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from engine.client import Engine, prompt_body
from engine.errors import ConfigError, EngineError
from engine.events import Dialect, StreamEvent
from engine.options import (
    add_network_arguments,
    add_timeout_arguments,
    network_from,
    retry_from,
    timeouts_from,
)
from engine.redaction import redact, secret_values
from engine.runtime import env_api_key, env_base_url, require_ray, run_async

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_MODEL = "gpt-4.1-mini"


def _header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), val.strip()


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="stream one request and print the text as it arrives",
        description="Stream one request. Without --base-url (or OPENAI_BASE_URL)"
        " it runs against the built-in mock endpoint.",
    )
    p.add_argument("prompt", nargs="?", default="Say hello to stream-engine.")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--base-url", default=env_base_url())
    p.add_argument("--endpoint", choices=["responses", "chat", "completions"], default="responses")
    p.add_argument("--max-output-tokens", type=int, default=None)
    p.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        help="extra request header, 'Name: value' (repeatable)",
    )
    p.add_argument("--raw", action="store_true", help="print every event as a JSON line")
    add_timeout_arguments(p)
    add_network_arguments(p)
    p.set_defaults(func=_cmd_run)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    # --max-output-tokens 0 (or none) sends no cap: the server's default applies.
    endpoint = Dialect(args.endpoint)
    return prompt_body(endpoint, args.model, args.prompt, args.max_output_tokens or None)


async def _stream_one(args: argparse.Namespace, base_url: str) -> int:
    out = sys.stdout
    headers = dict(args.header)
    # A server may echo the key into what it streams: nothing printed may show it.
    secrets = secret_values(env_api_key(), headers)

    def show(event: StreamEvent) -> None:
        if args.raw:
            line = orjson.dumps({"type": event.type, "data": event.data}).decode()
            out.write(redact(line, secrets) + "\n")
        else:
            delta = event.text_delta
            if delta:
                out.write(redact(delta, secrets))
                out.flush()

    network = network_from(args, "run").engine_options()
    async with Engine(
        base_url=base_url, timeouts=timeouts_from(args), retry=retry_from(args), **network
    ) as engine:
        try:
            result = await engine.run(
                _body(args), handlers=[show], endpoint=Dialect(args.endpoint), headers=headers
            )
        except EngineError as exc:
            print(f"\nerror: {exc.kind}: {exc}", file=sys.stderr)
            return 1
    u = result.usage
    usage = (
        f"{u.input_tokens} in ({u.cached_tokens} cached), {u.output_tokens} out "
        f"({u.reasoning_tokens} reasoning), {u.total_tokens} total"
        if u
        else "not reported"
    )
    ttft = f"{result.ttft_s * 1000:.1f} ms" if result.ttft_s is not None else "n/a"
    for call in result.tool_calls:
        print(redact(f"\ntool call {call.id}: {call.name}({call.arguments})", secrets))
    reason = result.incomplete_reason or result.finish_reason or "no reason given"
    print(
        f"\n\nended: {result.status} ({reason})\nusage: {usage}\n"
        f"time to first token: {ttft}   total: {result.e2e_s * 1000:.1f} ms"
        f"   events: {result.events}   request id: {result.request_id}",
        file=sys.stderr,
    )
    return 0


async def _cmd_run_async(args: argparse.Namespace) -> int:
    if args.base_url:
        return await _stream_one(args, args.base_url)
    from engine.mock import MockConfig, MockServer  # noqa: PLC0415 - only when embedded

    # Realistic pacing so the text is seen streaming, not printed at once.
    server = MockServer(
        MockConfig(ttft_ms=150.0, itl_ms=15.0, output_tokens=60), host="127.0.0.1", port=0
    )
    await server.start()
    print(
        f"(no --base-url: using the built-in mock endpoint at {server.base_url})", file=sys.stderr
    )
    try:
        return await _stream_one(args, server.base_url)
    finally:
        await server.stop()


def _cmd_run(args: argparse.Namespace) -> int:
    return run_async(_cmd_run_async(args))


def _add_mock(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from engine.mock import command  # noqa: PLC0415 - keeps `run` start-up light

    p = sub.add_parser("mock", help="serve the mock OpenAI-compatible endpoint")
    command.add_arguments(p)
    p.set_defaults(func=command.run)


EXTRA_LINE = "pip install 'stream-engine[cli]'"


def _add_needing_extra(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    missing: ImportError,
) -> None:
    """A verb whose libraries (the `cli` extra) are not installed: it says the pip line."""
    # No option is an option here (prefix_chars): whatever follows reaches the pip line.
    p = sub.add_parser(
        name, help=f"{help_text} (needs: {EXTRA_LINE})", add_help=False, prefix_chars="\0"
    )
    p.add_argument("rest", nargs="*")

    def need_extra(_args: argparse.Namespace) -> int:
        print(
            f"stream-engine {name} needs the tools' libraries ({missing.name} is missing): "
            f"{EXTRA_LINE}",
            file=sys.stderr,
        )
        return 2

    p.set_defaults(func=need_extra)


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        from engine.loadtest import command  # noqa: PLC0415 - keeps `run` start-up light
    except ImportError as exc:
        _add_needing_extra(sub, "bench", "load-test an endpoint", exc)
        return

    p = sub.add_parser(
        "bench",
        help="load-test an endpoint (the built-in mock by default)",
        description="Load-test an OpenAI-compatible endpoint: TTFT, ITL, "
        "throughput, goodput. Without --base-url it starts the built-in mock.",
    )
    command.add_arguments(p)

    def bench(args: argparse.Namespace) -> int:
        on_ray = None
        if args.ray is not None:  # the optional extra, loaded only when asked for
            require_ray()
            from engine.distributed.loadtest import run_load_on_ray  # noqa: PLC0415

            def on_ray(config: Any, address: str | None, workers: int | None) -> Any:
                return run_load_on_ray(config, address=address, workers=workers or 1)

        return command.run(args, on_ray)

    p.set_defaults(func=bench)


def _add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        from engine.loadtest import compare  # noqa: PLC0415 - keeps `run` start-up light
    except ImportError as exc:
        _add_needing_extra(sub, "compare", "compare bench results", exc)
        return

    p = sub.add_parser(
        "compare",
        help="compare bench results (the first is the baseline)",
        description="Compare `bench -o` JSON documents side by side: each "
        "change against the first (the baseline), flagged when it is outside "
        "the runs' own noise (bootstrap intervals). Exit code 0: no regression; "
        "1: a regression beyond --threshold; 2: bad input.",
    )
    compare.add_arguments(p)
    p.set_defaults(func=compare.run)


def _add_batch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from engine.batch import command  # noqa: PLC0415 - keeps `run` start-up light

    p = sub.add_parser(
        "batch",
        help="run an OpenAI Batch file (exactly once, resumable)",
        description="Run an OpenAI Batch JSONL file through streaming requests: "
        "exactly once, resumable after a kill, rate-limited.",
    )
    command.add_arguments(p)

    def batch(args: argparse.Namespace) -> int:
        on_ray = None
        if args.ray is not None:  # the optional extra, loaded only when asked for
            require_ray()
            from engine.distributed.batch import run_batch_on_ray  # noqa: PLC0415

            def on_ray(config: Any, address: str | None, workers: int | None) -> Any:
                return run_batch_on_ray(config, address=address, workers=workers)

        return command.run(args, on_ray)

    p.set_defaults(func=batch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-engine",
        description="Async streaming engine for OpenAI-compatible endpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_mock(sub)
    _add_bench(sub)
    _add_compare(sub)
    _add_batch(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:  # a bad option found late (a CA bundle that cannot be read)
        print(f"stream-engine {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
