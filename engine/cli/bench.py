"""The `stream-engine bench` verb (also `python -m engine.loadtest`): flags -> LoadConfig -> run.

Without `--base-url` it starts the mock endpoint in its own process (so the server never
competes with the client for a core or the GIL) with a realistic latency model, and runs a
short test against it: a new user sees the whole thing work in seconds.

A bad day loses nothing: the outputs are checked before the first request, the first request
goes alone (a wrong key, path or host ends the command there, exit 2), and SIGINT or SIGTERM
end the load as its end would, keeping what was measured (exit 130 / 143).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import signal
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from engine.cli.embedded import add_embedded_mock_arguments, start_embedded_mock
from engine.cli.options import (
    DEFAULT_MODEL,
    add_network_arguments,
    add_timeout_arguments,
    header,
    network_from,
    seconds,
    timeouts_from,
)
from engine.cli.workload import (
    add_search_arguments,
    add_workload_arguments,
    rate_argument,
    workload_fields,
)
from engine.config import env_api_key, env_base_url
from engine.errors import ConfigError, JobFailed
from engine.loadtest.config import AUTO_WORKERS, LoadConfig, parse_slo
from engine.loadtest.interrupts import Interrupted, Stop, on_signals, signals_saying
from engine.loadtest.openfiles import fit_open_files
from engine.loadtest.outputs import RUNS_DIR, check_outputs, write_outputs
from engine.loadtest.result import BenchResult
from engine.loadtest.search import SearchBy, run_search
from engine.loadtest.servermetrics import ServerMetricsScraper, metrics_url
from engine.loadtest.workers import (
    STREAMS_PER_WORKER,
    resolve_workers,
    run_load,
    run_sweep,
    usable_cores,
)
from engine.loadtest.workload import Workload
from engine.report.console import print_summary, sweep_table
from engine.report.progress import LiveProgress, LoadProgress, LogProgress
from engine.report.text import client_state, saturation_text
from engine.runtime import raise_open_files_limit, run_async

if TYPE_CHECKING:
    from collections.abc import Sequence

    from engine.loadtest.runner import Progress

MOCK_MODEL = "mock-model"


def _workers(value: str) -> int:
    if value == "auto":
        return AUTO_WORKERS
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a count >= 1, got {value!r}")
    return count


def _grace(value: str) -> float | None:
    """Seconds, where 0 means cut off at once (unlike a time limit's 0); 'none': no cut-off."""
    grace = seconds(value)
    if grace is None and value.lower() not in ("none", "off"):
        return 0.0
    return grace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the bench flags on `parser` (shared by the main CLI and `python -m`). Every
    flag says what it does and its default."""
    target = parser.add_argument_group("target")
    target.add_argument(
        "--base-url",
        default=env_base_url(),
        help="endpoint base URL, e.g. http://host:8000/v1 (default: "
        "$OPENAI_BASE_URL; unset = the built-in mock in its own process)",
    )
    target.add_argument(
        "--api-key",
        default=None,
        help="bearer token (default: $OPENAI_API_KEY; prefer the variable: a "
        "flag's value shows in the process list)",
    )
    target.add_argument(
        "--endpoint",
        choices=["responses", "chat", "completions"],
        default="responses",
        help="the API to load: /responses, /chat/completions or the legacy /completions "
        "(default %(default)s)",
    )
    target.add_argument(
        "--model", default=None, help=f"model (default {DEFAULT_MODEL}; {MOCK_MODEL} on the mock)"
    )
    target.add_argument(
        "--header",
        type=header,
        action="append",
        default=[],
        help="extra request header 'Name: value' (repeatable; default none)",
    )
    shape = parser.add_argument_group("load shape")
    shape.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="closed loop: concurrent users (default %(default)s; sweep: saturation)",
    )
    shape.add_argument(
        "--rate",
        type=rate_argument,
        default=None,
        help="open loop: requests per second, sent on schedule, or a series of steps and "
        "ramps, e.g. 10:30s,10-50:60s,50:1m (default: none, a closed loop)",
    )
    shape.add_argument(
        "--arrival",
        choices=["poisson", "constant"],
        default="poisson",
        help="open-loop inter-arrivals (default %(default)s)",
    )
    shape.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="open loop: gamma shape of inter-arrivals, 1 Poisson, <1 burstier (default 1)",
    )
    shape.add_argument(
        "--sweep",
        type=int,
        default=0,
        metavar="STEPS",
        help="sweep: one stream, saturation, then STEPS rates in between (default 0: no sweep)",
    )
    shape.add_argument(
        "--requests",
        type=int,
        default=None,
        help="measured requests (default: none, --duration decides)",
    )
    shape.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds (default 10 unless --requests; both: whichever ends first)",
    )
    shape.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of load before the window, excluded (default %(default)g)",
    )
    shape.add_argument(
        "--workers",
        type=_workers,
        default=AUTO_WORKERS,
        metavar="N|auto",
        help="client processes, one event loop each (default auto: one per "
        f"{STREAMS_PER_WORKER} streams in flight, at most one per usable core); "
        "with --ray, Ray actors (auto: one per "
        f"{STREAMS_PER_WORKER} streams)",
    )
    shape.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="generate the load from Ray actors (pip install "
        "'stream-engine[ray]'): 'auto' joins the running cluster, 'host:port' or "
        "'ray://…' a given one, 'local' starts a private instance (default: no Ray)",
    )
    req = parser.add_argument_group("requests")
    req.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ask for exactly --output-tokens with vLLM's ignore_eos and min_tokens beside "
        "the cap; servers that do not know them ignore them (default: yes, except on "
        "OpenAI's and Azure's APIs, which refuse unknown fields: there the cap alone)",
    )
    req.add_argument(
        "--prompts",
        default=None,
        help="JSONL of request bodies (or Batch lines), sent as they are (default: synthetic)",
    )
    req.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="connections per worker's pool (default: --concurrency in a closed loop, 4096 "
        "in an open one)",
    )
    req.add_argument(
        "--timeout",
        type=seconds,
        default=None,
        metavar="S",
        help="the whole request: the same as --total-timeout (wins over it; default none)",
    )
    req.add_argument(
        "--grace",
        type=_grace,
        default=30.0,
        metavar="S",
        help="after the last send, how long requests still in flight may take; "
        "then they are cut off and counted as failed 'Unfinished' (default 30; "
        "'none': wait for each within its time limits)",
    )
    # --max-retries, as on run and batch; --retries is its old name, kept and not shown.
    req.add_argument(
        "--max-retries",
        type=int,
        default=0,
        metavar="N",
        help="retries of a request that failed before its first event (default 0: a load "
        "test counts 429s and 5xx, it does not hide them)",
    )
    req.add_argument(
        "--retries", type=int, dest="max_retries", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    req.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the synthetic prompts and the open-loop schedule (default %(default)s)",
    )
    add_workload_arguments(req, shape)
    add_search_arguments(shape)
    out = parser.add_argument_group("results")
    out.add_argument(
        "--slice",
        type=float,
        default=None,
        metavar="S",
        help="also give the results per slice of S seconds of the window (default: none)",
    )
    out.add_argument(
        "--slo",
        type=parse_slo,
        default={},
        help="goodput objectives, e.g. ttft_ms=500,tpot_ms=50 (also itl_ms, e2e_ms; default none)",
    )
    out.add_argument(
        "--label",
        default="",
        help="name the run: the JSON's label and the run folder's suffix (default: the mode)",
    )
    saved = out.add_mutually_exclusive_group()
    saved.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="the run folder: result.json, requests.csv and report.html go "
        f"here (default: ./{RUNS_DIR}/<YYYYmmdd-HHMMSS>-<label or mode>/)",
    )
    saved.add_argument(
        "--no-save", action="store_true", help="no run folder (only what -o/--csv/--html ask for)"
    )
    out.add_argument(
        "--output", "-o", default=None, help="also write the JSON result here (default: no)"
    )
    out.add_argument(
        "--csv", default=None, help="also write one CSV row per request here (default: no)"
    )
    out.add_argument("--html", default=None, help="also write the HTML report here (default: no)")
    out.add_argument(
        "--quiet", "-q", action="store_true", help="no live progress (default: shown on stderr)"
    )
    client = parser.add_argument_group("client self-check")
    client.add_argument(
        "--spin-ms",
        type=float,
        default=1.0,
        help="open loop: yield-spin before each send (default %(default)g; 0 = off)",
    )
    client.add_argument(
        "--lag-threshold-ms",
        type=float,
        default=5.0,
        help="loop lag p99 above this marks the client as delayed (default %(default)g)",
    )
    client.add_argument(
        "--read-delay-threshold-ms",
        type=float,
        default=2.0,
        help="canary read delay p99 above this marks the client as delayed (default %(default)g)",
    )
    client.add_argument(
        "--no-canary",
        action="store_true",
        help="do not read the stamped canary stream (no read delay figure; default: read it)",
    )
    add_embedded_mock_arguments(parser)
    add_timeout_arguments(parser, retries=False)
    add_network_arguments(parser)
    server = parser.add_argument_group("server metrics (docs/server-metrics.md)")
    server.add_argument(
        "--server-metrics",
        nargs="?",
        const="auto",
        default=None,
        metavar="URL",
        help="scrape the server's Prometheus endpoint during the run (vLLM, "
        "SGLang, llama-server --metrics); no URL: the base URL's /metrics (default: off)",
    )
    server.add_argument(
        "--server-metrics-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between scrapes (default %(default)g)",
    )


def config_from_args(
    args: argparse.Namespace, base_url: str, facts: dict[str, Any] | None = None
) -> LoadConfig:
    duration = args.duration
    if duration is None and args.requests is None and args.trace is None:
        duration = None if isinstance(args.rate, str) else 10.0  # a series sets its own
    model = args.model or (MOCK_MODEL if facts else DEFAULT_MODEL)
    limits = timeouts_from(args)
    if args.timeout is not None:  # --timeout S is kept: --total-timeout S, and it wins
        limits = dataclasses.replace(limits, total_s=args.timeout)
    network = network_from(args, "bench")
    network.engine_options()  # a CA bundle that cannot be read: one line now, not per worker
    return LoadConfig(
        base_url=base_url,
        api_key=args.api_key or env_api_key(),
        endpoint=args.endpoint,
        model=model,
        concurrency=args.concurrency,
        arrival=args.arrival,
        burstiness=args.burstiness,
        requests=args.requests,
        duration_s=duration,
        warmup_s=args.warmup,
        prompts_file=args.prompts,
        ignore_eos=args.ignore_eos,  # None: asked for unless the API refuses unknown fields
        slo=args.slo,
        workers=args.workers,
        max_connections=args.max_connections,
        timeouts=limits,
        network=network,
        grace_s=args.grace,
        retries=args.max_retries,
        seed=args.seed,
        headers=dict(args.header),
        spin_ms=args.spin_ms,
        lag_threshold_ms=args.lag_threshold_ms,
        sweep_steps=args.sweep,
        facts=facts or {},
        canary=not args.no_canary,
        read_delay_threshold_ms=args.read_delay_threshold_ms,
        label=args.label,
        slice_s=args.slice,
        **workload_fields(args),
    )


async def _execute(
    config: LoadConfig,
    progress: Progress | None,
    scraper: ServerMetricsScraper | None,
    stop: Stop,
    search: tuple[SearchBy, float] | None = None,
) -> Measured:
    """The load, with SIGINT and SIGTERM ending it (`engine.loadtest.interrupts`). A stop
    never cancels this task: once the load has measured, a signal during the clean-up must
    not lose it; before, the priming hears the stop and ends at once."""
    with on_signals(stop, (signal.SIGINT, signal.SIGTERM)), stop.held():
        async with scraper if scraper is not None else contextlib.nullcontext():
            document = None
            if search is not None:
                found = await run_search(config, progress, stop, by=search[0], step_s=search[1])
                results, document = found.results, found.document()
            elif config.sweep_steps > 0:
                results = await run_sweep(config, progress, stop)
            else:
                results = [await run_load(config, progress, stop=stop)]
    if scraper is not None:  # on each run's own clock origin
        for result in results:
            result.server_metrics = scraper.document(result.origin_ns)
    return Measured(results, document)


@dataclasses.dataclass(slots=True)
class Measured:
    """What a bench measured: its runs, and a search's own document (None: the runs')."""

    results: list[BenchResult]
    document: dict[str, Any] | None = None


def _scraper(args: argparse.Namespace, config: LoadConfig) -> ServerMetricsScraper | None:
    """`--server-metrics [URL]`: the server's Prometheus endpoint, scraped beside the load."""
    if args.server_metrics is None:
        return None
    if args.ray is not None:
        raise ConfigError("--server-metrics runs with the load on one machine; drop --ray")
    url = metrics_url(config.base_url) if args.server_metrics == "auto" else args.server_metrics
    auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else None
    return ServerMetricsScraper(
        url, args.server_metrics_interval, headers=auth, network=config.network
    )


# `--ray`: generates the load from Ray actors; handed in by the CLI (engine.distributed
# imports this package, so this package never imports it back).
LoadOnRay = Callable[[LoadConfig, str | None, int | None, Stop], BenchResult]


def _run_on_ray(config: LoadConfig, address: str, on_ray: LoadOnRay | None) -> list[BenchResult]:
    if config.sweep_steps > 0:
        raise ConfigError("--sweep runs on one machine; drop --ray or --sweep")
    if on_ray is None:
        raise ConfigError("--ray runs from the stream-engine command")
    Workload(config)  # the workload's files read here first: a bad one is one line
    config = asyncio.run(resolve_workers(config, capped=False))
    stop = Stop()  # said by SIGINT and SIGTERM; the driver tells the actors
    with signals_saying(stop, (signal.SIGINT, signal.SIGTERM)):
        return [on_ray(config, None if address == "local" else address, config.workers, stop)]


def _progress(args: argparse.Namespace, console: Console, stack: ExitStack) -> LoadProgress:
    """The live display on a terminal, plain lines in a log; with --quiet, one that shows
    nothing (and the load sends it nothing)."""
    if args.quiet:
        return LoadProgress()
    if console.is_terminal:
        return stack.enter_context(LiveProgress(console))
    return LogProgress(console)


def _measure(args: argparse.Namespace, console: Console, on_ray: LoadOnRay | None) -> Measured:
    """Start what the load needs (the embedded mock), run it, and stop it all again."""
    # First: every process started from here (the mock, the workers) inherits the limit.
    open_files = raise_open_files_limit()
    with ExitStack() as stack:
        progress = _progress(args, console, stack)
        base_url, facts = args.base_url, None
        if not base_url:
            progress.stage("starting the mock endpoint")
            base_url, facts = start_embedded_mock(args, console, stack)
        config = config_from_args(args, base_url, facts)
        scraper = _scraper(args, config)
        if args.ray is not None:  # the load's processes are on other machines, with theirs
            progress.stage("starting the Ray actors")
            if args.search is not None:
                raise ConfigError("--search runs on one machine; drop --ray")
            return Measured(_run_on_ray(config, args.ray, on_ray))
        config, said = fit_open_files(
            config, open_files, embedded_mock=facts is not None, cores=usable_cores()
        )
        if said is not None:
            _line(console, said, style="yellow")
        progress.stage("starting the load")
        search = None if args.search is None else (args.search, args.search_step)
        shown = None if args.quiet else progress
        return run_async(_execute(config, shown, scraper, Stop(), search))


def _render_html(
    results: Sequence[BenchResult],
    docs: Sequence[dict[str, Any]],
    document: dict[str, Any] | None = None,
) -> str:
    """The HTML report, Plotly imported only now: only a run that writes a page needs it."""
    from engine.report.html import render_html  # noqa: PLC0415

    return render_html(results, docs, None if document is None else document.get("search"))


def _line(console: Console, text: str, style: str = "red") -> None:
    """One line, never wrapped: a log or a script reads it whole."""
    console.print(Text(text, style=style), soft_wrap=True)


def run(args: argparse.Namespace, on_ray: LoadOnRay | None = None) -> int:
    """Run the bench described by `args`; 0 when at least one request succeeded, 1 when none
    did, 2 when it could not run or save, 128 + the signal's number when one ended it."""
    console = Console(stderr=True)
    started = dt.datetime.now().astimezone()  # the run folder's name: local time, as ls shows
    try:
        check_outputs(args)
        measured = _measure(args, console, on_ray)
    except (ConfigError, JobFailed) as exc:
        _line(console, f"error: {exc}")
        return 2
    except Interrupted as exc:
        _line(console, f"interrupted: {exc}; nothing written", style="yellow")
        return exc.halt.exit_status
    results = measured.results
    docs = [result.summary() for result in results]
    if measured.document is not None:  # a search's runs as reported here (server metrics too)
        measured.document["runs"] = docs
    if len(docs) == 1:
        print_summary(docs[0], console)
    else:
        console.print(sweep_table(docs))
        if measured.document is None:
            console.print(Text(saturation_text(docs)))
        else:  # a search's steps are in the bisection's order: its verdict, not a saturation
            console.print(Text(f"search: {measured.document['search']['verdict']['note']}"))
        states = {client_state(doc)[0] for doc in docs} - {"OK"}
        console.print(
            docs[0]["client"]["verdict"]
            if not states
            else f"{', '.join(sorted(states))} in at least one run: see the client column"
        )
    try:
        for line in write_outputs(args, results, docs, _render_html, started, measured.document):
            console.print(Text(line))
    except OSError as exc:
        _line(console, f"error: results not written: {exc}")
        return 2
    halt = next((result.halt for result in results if result.halt is not None), None)
    if halt is not None:
        _line(console, f"interrupted: {halt.message}; what was measured is kept", style="yellow")
        return halt.exit_status
    return 0 if any(doc["completed"] for doc in docs) else 1
