"""Where a bench's results go: the run folder and the `-o/--csv/--html` paths, checked before
the first request (a measurement that cannot be saved is not worth taking) and written after
the last."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from engine.errors import ConfigError
from engine.loadtest.report import (
    RUN_FILES,
    RUNS_DIR,
    run_folder,
    sweep_document,
    write_csv,
    write_json,
)

if TYPE_CHECKING:
    import argparse

    from rich.console import Console

    from engine.loadtest.result import BenchResult

__all__ = ["check_outputs", "write_outputs"]


def _folder(args: argparse.Namespace) -> Path | None:
    """The run folder as asked (`--output-dir`), the parent of the default one, or None."""
    if args.no_save:
        return None
    return Path(args.output_dir) if args.output_dir else Path(RUNS_DIR)


def _explicit(args: argparse.Namespace) -> dict[str, str | None]:
    return {"json": args.output, "csv": args.csv, "html": args.html}


def check_outputs(args: argparse.Namespace) -> None:
    """Raise ConfigError naming the first place the results could not be written: its
    nearest existing folder must take a new file, an existing file must open for writing.
    Nothing is created but a temporary file, removed at once."""
    folder = _folder(args)
    targets = [] if folder is None else [(folder, True)]
    targets += [(Path(path), False) for path in _explicit(args).values() if path]
    for path, is_folder in targets:
        try:
            _check_writable(path, is_folder=is_folder)
        except OSError as exc:
            raise ConfigError(
                f"results cannot be written to {path}: {exc.strerror or exc}"
            ) from None


def _check_writable(path: Path, *, is_folder: bool) -> None:
    if path.exists() and not is_folder:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        with path.open("ab"):  # opened for writing, left as it was
            return
    ancestor = path if is_folder else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(20, f"{ancestor} is not a folder")
    with tempfile.TemporaryFile(dir=ancestor):
        pass


def run_name(args: argparse.Namespace) -> str:
    """The run folder's suffix: `--label`, else the load's shape."""
    if args.label:
        return str(args.label)
    return "sweep" if args.sweep > 0 else "open" if args.rate is not None else "closed"


def write_outputs(
    args: argparse.Namespace,
    results: list[BenchResult],
    docs: list[dict[str, Any]],
    console: Console,
    started: dt.datetime | None = None,
) -> Path | None:
    """The run folder (unless --no-save) and any explicit -o/--csv/--html paths; returns the
    folder. Each output is rendered once, whatever the number of places it goes to."""
    folder = _folder(args)
    if folder is not None:
        if args.output_dir:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = run_folder(folder, started or dt.datetime.now().astimezone(), run_name(args))
    explicit = _explicit(args)
    paths = {
        kind: ([] if folder is None else [folder / name])
        + ([Path(explicit[kind] or "")] if explicit[kind] else [])
        for kind, name in RUN_FILES.items()
    }
    for path in (path for kind_paths in paths.values() for path in kind_paths):
        path.parent.mkdir(parents=True, exist_ok=True)
    for path in paths["json"]:
        write_json(docs[0] if len(docs) == 1 else sweep_document(docs), path)
    rows = sum(len(r.measured) for r in results)
    for path in paths["csv"]:
        write_csv(results, path)
    if paths["html"]:
        from engine.loadtest.html import render_html  # noqa: PLC0415 - plotly: only here

        page = render_html(results, docs)
        for path in paths["html"]:
            path.write_text(page, encoding="utf-8")
    for kind, what in (
        ("json", "JSON result"),
        ("csv", f"CSV ({rows} requests)"),
        ("html", "HTML report"),
    ):
        if explicit[kind]:
            console.print(Text(f"{what}: {explicit[kind]}"))
    if folder is not None:
        console.print(
            Text(
                f"results: {folder} ({', '.join(RUN_FILES.values())}; open "
                f"{RUN_FILES['html']} in a browser)"
            )
        )
    return folder
