"""The `batch` verb: argparse glue around `run_batch` (engine/cli.py wires it in).

Exit status: 0 when every record of the job succeeded, 1 when the job finished with records
in the errors file (failed requests or invalid lines), 2 when it could not start (bad
arguments, duplicate custom_ids, an input edited since its records were written, a locked
output): nothing was sent then; 2 also when the job itself failed (a wrong key, path or host:
`JobFailed`), with nothing written for the records it held; 3 when it stopped because a
record could not be written (disk full, file too large, I/O error): the files hold whole
records only and the same command resumes; 130 on Ctrl-C (SIGINT), 143 on SIGTERM, each
after the summary line of what was done.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson

from engine.batch.inputs import Shard
from engine.batch.runner import BatchConfig, BatchRunner, Endpoint
from engine.batch.store import StoreWriteError
from engine.batch.summary import BatchSummary, format_summary
from engine.cli.options import (
    add_key_argument,
    add_network_arguments,
    add_timeout_arguments,
    network_from,
    timeouts_from,
)
from engine.config import DEFAULT_BASE_URL, RetryPolicy, env_api_key, env_base_url
from engine.errors import ConfigError, JobFailed
from engine.runtime import run_async

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_WRITE_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 128 + signal.SIGTERM
T = TypeVar("T")


class Terminated(Exception):
    """SIGTERM arrived (`timeout`, systemd, Kubernetes, CI runners): stop as on Ctrl-C."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `batch` flags, on a parser the caller owns."""
    parser.add_argument(
        "input",
        type=Path,
        help="requests, one JSON object per line (OpenAI Batch format, or plain request bodies)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="results in the OpenAI Batch output format (appended; resumable)",
    )
    parser.add_argument(
        "--errors",
        type=Path,
        default=None,
        help="failed and invalid records (default: OUTPUT.errors.jsonl)",
    )
    parser.add_argument(
        "--base-url",
        action="append",
        default=[],
        metavar="URL",
        help="endpoint base URL, repeatable (default: $OPENAI_BASE_URL)",
    )
    add_key_argument(parser)
    parser.add_argument(
        "--api-key-env",
        action="append",
        default=[],
        metavar="NAME",
        help="environment variable holding an API key, repeatable "
        "(default: OPENAI_API_KEY); one engine per (URL, key)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=256, help="streams in flight at most (default: 256)"
    )
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute, whole job")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute, whole job")
    parser.add_argument(
        "--no-adaptive",
        dest="adaptive",
        action="store_false",
        help="keep concurrency fixed instead of halving it on 429",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=RetryPolicy().max_retries,
        help="retries per request before it goes to the errors file",
    )
    parser.add_argument(
        "--estimate-output-tokens",
        type=int,
        default=1024,
        metavar="N",
        help="output tokens assumed for a body without an output cap (TPM)",
    )
    add_timeout_arguments(parser, retries=False)
    add_network_arguments(parser)
    parser.add_argument(
        "--shard",
        type=_shard,
        default=Shard(),
        metavar="I/N",
        help="process shard I of N (1-based; by crc32 of custom_id)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="send the errors file's records again; each leaves the errors file only "
        "once it has ended again",
    )
    parser.add_argument(
        "--allow-changed-input",
        action="store_true",
        help="resume although lines of finished records changed or are gone (their old "
        "records are kept); refused otherwise",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the input and estimate tokens; send nothing",
    )
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="fsync the files at most once a second (survive power loss)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no live progress display (it is off anyway when not a terminal)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    ray = parser.add_argument_group("scale-out on Ray (pip install 'stream-engine[ray]')")
    ray.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run the shards as Ray actors: 'auto' joins the running cluster, "
        "'host:port' or 'ray://…' a given one, 'local' starts a private instance",
    )
    ray.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="with --ray: actors, one shard each (default: one per cluster CPU); "
        "--concurrency, --rpm and --tpm hold for the whole job",
    )


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _endpoints(args: argparse.Namespace) -> list[Endpoint]:
    """One endpoint per (URL, key); with several keys the summary names each by its variable."""
    urls = args.base_url or [env_base_url() or DEFAULT_BASE_URL]
    if not args.base_url and not env_base_url():
        if not (args.api_key or args.api_key_env or env_api_key()):
            raise ConfigError(
                "no --base-url, no OPENAI_BASE_URL and no API key: set --base-url (or "
                f"OPENAI_BASE_URL) for your endpoint, or OPENAI_API_KEY for {DEFAULT_BASE_URL}"
            )
        if not args.dry_run:
            sys.stderr.write(
                f"stream-engine batch: sending to {DEFAULT_BASE_URL} (no --base-url, "
                "no OPENAI_BASE_URL)\n"
            )
    if args.api_key is not None:  # the discouraged flag: one key, named as the flag
        if args.api_key_env:
            raise ConfigError("--api-key and --api-key-env do not combine: choose one")
        return [Endpoint(url, args.api_key) for url in urls]
    names = args.api_key_env or ["OPENAI_API_KEY"]
    keys: list[str | None] = []
    for name in names:
        key = os.environ.get(name)
        if key is None and args.api_key_env:
            raise ConfigError(f"environment variable {name} is not set")  # the name, never a key
        keys.append(key)
    return [
        Endpoint(url, key, f"{url} ${name}" if len(names) > 1 else "")
        for url in urls
        for name, key in zip(names, keys, strict=True)
    ]


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    if args.workers is not None and args.ray is None:
        raise ConfigError("--workers goes with --ray (one process runs the job otherwise)")
    return BatchConfig(
        input_path=args.input,
        output_path=args.output,
        errors_path=args.errors,
        endpoints=_endpoints(args),
        concurrency=args.concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        adaptive=args.adaptive,
        retry=RetryPolicy(max_retries=args.max_retries),
        timeouts=timeouts_from(args),
        shard=args.shard,
        default_output_tokens=args.estimate_output_tokens,
        dry_run=args.dry_run,
        fsync=args.fsync,
        progress=args.progress and sys.stderr.isatty() and not args.dry_run,
        retry_failed=args.retry_failed,
        allow_changed_input=args.allow_changed_input,
        network=network_from(args, "batch"),
    )


# `--ray`: runs a job on Ray actors; handed in by the CLI (engine.distributed imports this
# package, so this package never imports it back).
BatchOnRay = Callable[[BatchConfig, str | None, int | None], BatchSummary]


def _on_ray(on_ray: BatchOnRay | None) -> BatchOnRay:
    if on_ray is None:
        raise ConfigError("--ray runs from the stream-engine command")
    return on_ray


async def _until_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    """`coro`, cancelled by SIGTERM as asyncio cancels the main task on SIGINT."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - inside the runner's main task
    got: list[int] = []

    def on_sigterm() -> None:
        got.append(signal.SIGTERM)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        return await coro
    try:
        return await coro
    except asyncio.CancelledError:
        if got:
            raise Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _blocking_until_sigterm(call: Callable[[], T]) -> T:
    """`call()`, which blocks in Ray's `ray.get`: SIGTERM interrupts it as SIGINT does (Ray's
    blocking calls are ready for a KeyboardInterrupt), then raises Terminated."""
    got: list[int] = []

    def on_sigterm(signum: int, _frame: object) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)  # Cluster keeps it over ray.init
    try:
        return call()
    except KeyboardInterrupt:
        if got:
            raise Terminated from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, on_ray: BatchOnRay | None = None) -> int:
    """Run the job described by parsed arguments; returns the exit status."""
    runner: BatchRunner | None = None
    try:
        config = config_from_args(args)
        if args.ray is not None:
            address = None if args.ray == "local" else args.ray
            job = _on_ray(on_ray)
            summary = _blocking_until_sigterm(lambda: job(config, address, args.workers))
        else:
            runner = BatchRunner(config)
            summary = run_async(_until_sigterm(runner.run()))
    except ConfigError as exc:  # includes duplicate ids, bad and edited input files
        sys.stderr.write(f"stream-engine batch: {exc}\n")
        return EXIT_USAGE
    except JobFailed as exc:  # the held records were written nowhere: they stay to do
        sys.stderr.write(
            f"stream-engine batch: stopped: {exc}; nothing was written for these requests: "
            "fix the cause and run the same command to go on\n"
        )
        return EXIT_USAGE
    except StoreWriteError as exc:  # one line naming the file, the reason and what to do
        sys.stderr.write(f"stream-engine batch: {exc}\n")
        return EXIT_WRITE_FAILED
    except OSError as exc:
        sys.stderr.write(f"stream-engine batch: {exc}\n")
        return EXIT_USAGE
    except (KeyboardInterrupt, Terminated) as exc:  # every finished record is on disk already
        how, code = (
            ("SIGTERM", EXIT_TERMINATED)
            if isinstance(exc, Terminated)
            else ("Ctrl-C", EXIT_INTERRUPTED)
        )
        if runner is not None:
            runner.summary.wall_s = time.monotonic() - runner.summary.started_s
            sys.stderr.write(format_summary(runner.summary) + "\n")
        sys.stderr.write(
            f"stream-engine batch: interrupted ({how}); run the same command to resume\n"
        )
        return code
    sys.stderr.write(format_summary(summary) + "\n")
    if args.json:
        sys.stdout.write(orjson.dumps(summary.as_dict()).decode() + "\n")
    return EXIT_OK if summary.ok else EXIT_FAILURES
