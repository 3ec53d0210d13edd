"""Command line: `stream-engine run | mock | bench | compare | batch`, every command's face.

`run` (cli/run.py), `batch` (cli/batch.py), `mock` (cli/mock.py), `bench` (cli/bench.py) and
`compare` (cli/compare.py), with the flags they share (cli/options.py). Imports everything; nothing
imports it. The tools' libraries (the `cli` extra) load only with the verb that needs them.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import engine
from engine import _compiled
from engine.cli import run
from engine.errors import ConfigError
from engine.runtime import raise_open_files_limit, require_ray

if TYPE_CHECKING:
    from collections.abc import Sequence


# A verb's Ray runner: (its config, the cluster address or None, the actors or None, and
# for bench the stop its signals say).
OnRay = Callable[..., Any]


def _ray_when_asked(
    verb: Callable[[argparse.Namespace, OnRay | None], int], load: Callable[[], OnRay]
) -> Callable[[argparse.Namespace], int]:
    """`verb`, handed its Ray runner only when `--ray` asks for it: the optional extra is
    checked and imported then, never at start-up."""

    def run(args: argparse.Namespace) -> int:
        if args.ray is None:
            return verb(args, None)
        require_ray()
        return verb(args, load())

    return run


def _add_mock(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from engine.cli import mock as command  # noqa: PLC0415 - keeps `run` start-up light

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
        from engine.cli import bench as command  # noqa: PLC0415 - keeps `run` start-up light
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

    def on_ray() -> OnRay:
        from engine.distributed.loadtest import run_load_on_ray  # noqa: PLC0415 - the ray extra

        return lambda config, address, workers, stop: run_load_on_ray(
            config, address=address, workers=workers or 1, stop=stop
        )

    p.set_defaults(func=_ray_when_asked(command.run, on_ray))


def _add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        from engine.cli import compare  # noqa: PLC0415 - keeps `run` start-up light
    except ImportError as exc:
        _add_needing_extra(sub, "compare", "compare bench results", exc)
        return

    p = sub.add_parser(
        "compare",
        help="compare bench results (the first is the baseline)",
        description="Compare bench runs (their run folders or result files) side by side: each "
        "change against the first (the baseline), flagged when it is outside "
        "the runs' own noise (bootstrap intervals). Exit code 0: no regression; "
        "1: a regression beyond --threshold; 2: bad input.",
    )
    compare.add_arguments(p)
    p.set_defaults(func=compare.run)


def _add_batch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from engine.cli import batch as command  # noqa: PLC0415 - keeps `run` start-up light

    p = sub.add_parser(
        "batch",
        help="run an OpenAI Batch file (exactly once, resumable)",
        description="Run an OpenAI Batch JSONL file through streaming requests: "
        "exactly once, resumable after a kill, rate-limited.",
    )
    command.add_arguments(p)

    def on_ray() -> OnRay:
        from engine.distributed.batch import run_batch_on_ray  # noqa: PLC0415 - the ray extra

        return lambda config, address, workers: run_batch_on_ray(
            config, address=address, workers=workers
        )

    p.set_defaults(func=_ray_when_asked(command.run, on_ray))


def version_line() -> str:
    """`stream-engine 0.1.0 (compiled: yes)`, as black says it: which hot path is loaded
    (engine/_compiled.py), and why not the compiled one when a build is there."""
    why = _compiled.pure_reason() if _compiled.extension_modules() else None
    said = "yes" if engine.COMPILED else "no" if why is None else f"no, {why}"
    return f"stream-engine {engine.__version__} (compiled: {said})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-engine",
        description="Async streaming engine for OpenAI-compatible endpoints.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_parser(sub)
    _add_mock(sub)
    _add_bench(sub)
    _add_compare(sub)
    _add_batch(sub)
    return parser


def _unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """An unknown flag: the verb's own usage (not the top level's) and the closest flags."""
    actions = parser._actions  # noqa: SLF001 - argparse keeps its subparsers here
    verbs = next(a for a in actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    verb: argparse.ArgumentParser = verbs.choices[args.command]
    # Each flag by its whole name and by its last words: `--retrys` finds `--max-retries`.
    names: dict[str, str] = {}
    for action in verb._actions:  # noqa: SLF001
        for flag in action.option_strings:
            words = flag.lstrip("-").split("-")
            for i in range(len(words)):
                names.setdefault("-".join(words[i:]), flag)
    hints = []
    for word in extra:
        close = difflib.get_close_matches(word.partition("=")[0].lstrip("-"), names, n=1)
        if word.startswith("-") and close:
            hints.append(f"{word}: did you mean {names[close[0]]}?")
    verb.error(
        f"unrecognized arguments: {' '.join(extra)}" + ("; " + "; ".join(hints) if hints else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _unknown(parser, args, extra)
    raise_open_files_limit()  # every stream holds a socket: the soft limit is the first wall
    try:
        return int(args.func(args))
    except ConfigError as exc:  # a bad option found late (a CA bundle that cannot be read)
        print(f"stream-engine {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
