"""The `stream-engine compare` verb: bench documents in, a table (or JSON) and an exit code
out, for a CI gate (docs/compare.md). The figures are engine/loadtest/compare.py's, the view
engine/report/compare.py's."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson
from rich.console import Console
from rich.text import Text

from engine.loadtest.compare import (
    DEFAULT_THRESHOLD_PCT,
    EXIT_BAD_INPUT,
    CompareInputError,
    Report,
    compare_files,
)
from engine.report.compare import print_report

__all__ = ["add_arguments", "run"]


def _threshold(value: str) -> float:
    try:
        pct = float(value)
    except ValueError:
        pct = -1.0
    if not pct >= 0:
        raise argparse.ArgumentTypeError(f"expected a percentage >= 0, got {value!r}")
    return pct


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="RUN",
        help="bench results: the run folders bench prints (their result.json) or JSON "
        "documents (`bench -o`); the first is the baseline. Columns are named by each "
        "run's --label, else its folder's name",
    )
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=DEFAULT_THRESHOLD_PCT,
        metavar="PCT",
        help="a significant change for the worse by more than "
        "PCT %% is a regression: exit code 1 (default 10)",
    )
    parser.add_argument(
        "--html",
        default=None,
        metavar="PATH",
        help="also write the comparison as a self-contained HTML page (default: no)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the comparison as JSON on stdout instead of the table (default: the table)",
    )


def _write_page(report: Report, path: str) -> None:
    """The HTML page, Plotly imported only now: every command's start-up imports this module
    (the parser is built whole), and only --html needs Plotly."""
    from engine.report.compare_html import html_page  # noqa: PLC0415

    Path(path).write_text(html_page(report), encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    """0: no regression; 1: a regression; 2: bad input."""
    errors = Console(stderr=True)
    try:
        report = compare_files(args.files, args.threshold)
    except CompareInputError as exc:
        errors.print(Text(f"error: {exc}", style="red"))
        return EXIT_BAD_INPUT
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        # a CI log is not a terminal: no need to wrap the table at 80 columns
        auto_width = sys.stdout.isatty() or "COLUMNS" in os.environ
        print_report(report, Console(width=None if auto_width else 200))
    if args.html:
        try:
            _write_page(report, args.html)
        except OSError as exc:
            errors.print(
                Text(f"error: cannot write {args.html} ({exc.strerror or exc})", style="red")
            )
            return EXIT_BAD_INPUT
        errors.print(Text(f"HTML comparison: {args.html}"))
    return report.exit_code
