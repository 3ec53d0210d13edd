"""Where a bench's results go: the run folder and the `-o/--csv/--html` paths, checked before
the first request (a measurement that cannot be saved is not worth taking) and written after
the last. The documents are written here; the HTML page is rendered by the caller's
`render` (engine/report), which this package never imports. A sliced run (`--slice`) also
writes one row per slice beside each requests' CSV (`requests.slices.csv`)."""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from engine.errors import ConfigError
from engine.loadtest.metrics import CSV_COLUMNS, csv_row
from engine.loadtest.result import sweep_document
from engine.loadtest.slices import SLICE_COLUMNS

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from engine.loadtest.result import BenchResult

    # The page from the runs, their documents and a search's own document (None: no search).
    Render = Callable[[Sequence[BenchResult], Sequence[dict[str, Any]], dict[str, Any] | None], str]

__all__ = [
    "RUNS_DIR",
    "RUN_FILES",
    "check_outputs",
    "run_folder",
    "slices_path",
    "write_csv",
    "write_json",
    "write_outputs",
    "write_slices_csv",
]

RUNS_DIR = "stream-engine-runs"  # under the current directory: every run leaves its results
RUN_FILES = {"json": "result.json", "csv": "requests.csv", "html": "report.html"}


def run_folder(base: str | Path, started: dt.datetime, name: str) -> Path:
    """A new `<base>/<YYYYmmdd-HHMMSS>-<name>/`, created (never an existing one: two runs in
    the same second get `-2`, `-3`...). `name` is reduced to a safe file-name part."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60] or "run"
    stem = f"{started:%Y%m%d-%H%M%S}-{slug}"
    for n in itertools.count(1):
        folder = Path(base) / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")  # pragma: no cover


def write_json(doc: dict[str, Any], path: str | Path) -> None:
    Path(path).write_bytes(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    )


def write_csv(results: Sequence[BenchResult], path: str | Path) -> int:
    """One row per measured request (warm-up excluded); returns the row count."""
    rows = 0
    with Path(path).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run", *CSV_COLUMNS])
        for result in results:
            for record in result.measured:
                writer.writerow([result.label or result.config.label, *csv_row(record)])
                rows += 1
    return rows


def slices_path(path: str | Path) -> Path:
    """Where the per-slice CSV goes beside the requests' CSV: `requests.csv` ->
    `requests.slices.csv` (`out` -> `out.slices.csv`)."""
    return Path(path).with_suffix(".slices.csv")


def write_slices_csv(results: Sequence[BenchResult], path: str | Path) -> int | None:
    """One row per time slice of every run (`--slice`), beside the requests' CSV at `path`;
    returns the row count, or None (and writes nothing) when no run was sliced."""
    runs = [(result, rows) for result in results if (rows := result.slices()) is not None]
    if not runs:
        return None
    with slices_path(path).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run", *SLICE_COLUMNS])
        for result, rows in runs:
            label = result.label or result.config.label
            writer.writerows([label, *(row[name] for name in SLICE_COLUMNS)] for row in rows)
    return sum(len(rows) for _, rows in runs)


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
    if args.search is not None:
        return "search"
    return "sweep" if args.sweep > 0 else "open" if args.rate is not None else "closed"


def write_outputs(
    args: argparse.Namespace,
    results: list[BenchResult],
    docs: list[dict[str, Any]],
    render: Render,
    started: dt.datetime | None = None,
    document: dict[str, Any] | None = None,
) -> list[str]:
    """The run folder (unless --no-save) and any explicit -o/--csv/--html paths; returns the
    lines that say where they went. Each output is rendered once, whatever the number of
    places it goes to."""
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
        # A search's own document (its steps and verdict), else the run's or the sweep's.
        write_json(document or (docs[0] if len(docs) == 1 else sweep_document(docs)), path)
    rows = sum(len(r.measured) for r in results)
    sliced = None
    for path in paths["csv"]:
        write_csv(results, path)
        sliced = write_slices_csv(results, path)
    if paths["html"]:
        page = render(results, docs, document)
        for path in paths["html"]:
            path.write_text(page, encoding="utf-8")
    said = [
        f"{what}: {explicit[kind]}"
        for kind, what in (
            ("json", "JSON result"),
            ("csv", f"CSV ({rows} requests)"),
            ("html", "HTML report"),
        )
        if explicit[kind]
    ]
    if sliced is not None and explicit["csv"]:
        said.append(f"CSV per slice ({sliced} slices): {slices_path(explicit['csv'])}")
    if folder is not None:
        files = [*RUN_FILES.values()]
        if sliced is not None:
            files.insert(2, slices_path(RUN_FILES["csv"]).name)
        said.append(
            f"results: {folder} ({', '.join(files)}; open {RUN_FILES['html']} in a browser)"
        )
    return said
