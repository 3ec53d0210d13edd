"""The `run` verb: one request, its text printed as it streams, then how it ended.

Without --base-url (or OPENAI_BASE_URL) it runs against the built-in mock endpoint.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import orjson

from engine.bodies import prompt_body
from engine.cli.options import (
    DEFAULT_MODEL,
    add_key_argument,
    add_network_arguments,
    add_timeout_arguments,
    header,
    network_from,
    retry_from,
    timeouts_from,
)
from engine.client import Engine
from engine.config import env_api_key, env_base_url
from engine.errors import EngineError
from engine.events import Dialect, StreamEvent
from engine.redaction import redact, secret_values
from engine.runtime import run_async

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="stream one request and print the text as it arrives",
        description="Stream one request. Without --base-url (or OPENAI_BASE_URL)"
        " it runs against the built-in mock endpoint.",
    )
    p.add_argument(
        "prompt",
        nargs="?",
        default="Say hello to stream-engine.",
        help="what to ask (default: %(default)r)",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    p.add_argument(
        "--base-url",
        default=env_base_url(),
        help="endpoint base URL, e.g. http://host:8000/v1 (default: $OPENAI_BASE_URL; "
        "unset: the built-in mock)",
    )
    add_key_argument(p)
    p.add_argument(
        "--endpoint",
        choices=["responses", "chat", "completions"],
        default="responses",
        help="which API: /responses, /chat/completions or the legacy /completions "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-output-tokens",
        type=int,
        default=None,
        metavar="N",
        help="cap the answer at N tokens (default: no cap, the server's own)",
    )
    p.add_argument(
        "--header",
        type=header,
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
    key = args.api_key or env_api_key()
    secrets = secret_values(key, headers)

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
        base_url=base_url,
        api_key=key,
        timeouts=timeouts_from(args),
        retry=retry_from(args),
        **network,
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
