"""`stream-engine compare`'s view on the console: a table per comparison, the notes, the
legend and the verdict line (the page is engine/report/compare_html.py). The figures and
their judgement are engine/loadtest/compare.py's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from rich.table import Table
from rich.text import Text

from engine.loadtest.compare import CONFIDENCE, RESAMPLES

if TYPE_CHECKING:
    from rich.console import Console

    from engine.loadtest.compare import Cell, Comparison, Metric, Report

__all__ = [
    "change_text",
    "comparison_notes",
    "fmt",
    "judgement",
    "legend",
    "print_report",
    "style_of",
    "verdict",
]

Judgement = Literal["regression", "worse", "better", "noise"]
STYLES: dict[Judgement, str] = {
    "regression": "bold red",
    "worse": "red",
    "better": "green",
    "noise": "dim",
}


def fmt(metric: Metric, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if metric.unit == "tok/s" else f"{value:.2f}"


def change_text(metric: Metric, cell: Cell) -> str:
    """ "+99.3 %" (or, for a fraction, the difference in percentage points) and its mark."""
    if metric.kind == "fraction":
        if cell.change_abs is None:
            return "-"
        text = f"{cell.change_abs:+.2f} pp"
    elif cell.change_pct is None:
        return "-"
    else:
        text = f"{cell.change_pct:+.1f} %"
    if cell.regression:
        return text + " ! REGRESSION"
    if cell.significant:
        return text + " *"
    return text + (" ?" if cell.significant is None else "")


def judgement(metric: Metric, cell: Cell) -> Judgement:
    """A candidate's change in one word, for every view's colour: a regression, worse or
    better outside the noise, or inside it (higher latency and failures are worse, lower
    throughput is)."""
    if cell.regression:
        return "regression"
    if not cell.significant or cell.change_abs is None:
        return "noise"
    worse = cell.change_abs > 0 if metric.kind in ("latency", "fraction") else cell.change_abs < 0
    return "worse" if worse else "better"


def style_of(metric: Metric, cell: Cell) -> str:
    return STYLES[judgement(metric, cell)]


def console_tables(report: Report) -> list[Table]:
    names = report.names
    tables = []
    for comp in report.comparisons:
        title = f"compare against {names[0]}" + (
            f" (sweep step {comp.position + 1}: {' / '.join(comp.labels)})" if report.sweep else ""
        )
        table = Table(title=title, title_justify="left")
        table.add_column("metric", no_wrap=True)
        for i, name in enumerate(names):
            table.add_column(name, justify="right")
            if i:
                table.add_column("change", justify="right", no_wrap=True)
        for row in comp.rows:
            metric = row.metric
            cells: list[Text | str] = [
                f"{metric.name} ({metric.unit})",
                fmt(metric, row.cells[0].value),
            ]
            for cell in row.cells[1:]:
                cells += [
                    fmt(metric, cell.value),
                    Text(change_text(metric, cell), style=style_of(metric, cell)),
                ]
            table.add_row(*cells)
        tables.append(table)
    return tables


def legend(report: Report) -> str:
    pct = f"{CONFIDENCE:.0%}"
    return (
        f"* outside the noise: the runs' {pct} bootstrap intervals ({RESAMPLES} resamples)"
        f" do not overlap; ! regression: worse by more than {report.threshold_pct:g} % and "
        "outside the noise; ? no noise estimate"
    )


def _changes(report: Report, wanted: Judgement) -> dict[str, list[str]]:
    """Per candidate's name, its changes judged `wanted`: "TTFT p50 +95.1 %" (" at step 2")."""
    found: dict[str, list[str]] = {}
    for comp in report.comparisons:
        step = f" at step {comp.position + 1}" if report.sweep else ""
        for row in comp.rows:
            for name, cell in zip(report.names[1:], row.cells[1:], strict=True):
                if judgement(row.metric, cell) == wanted:
                    change = change_text(row.metric, cell).split(" ", 2)
                    found.setdefault(name, []).append(
                        f"{row.metric.name} {change[0]} {change[1]}{step}"
                    )
    return found


def verdict(report: Report) -> str:
    """One line naming each candidate, what regressed in it (or improved), and the baseline."""
    base = report.names[0]
    regressed = _changes(report, "regression")
    if regressed:
        return "REGRESSION: " + "; ".join(
            f"{name} against {base}: {', '.join(changes)}" for name, changes in regressed.items()
        )
    better = _changes(report, "better")
    said = f"no regression beyond {report.threshold_pct:g} % outside the noise against {base}"
    if better:
        said += "; better: " + "; ".join(
            f"{name}: {', '.join(changes)}" for name, changes in better.items()
        )
    return said


def comparison_notes(comp: Comparison) -> list[str]:
    """The comparison's notes, then each row note once, naming every row it applies to."""
    rows: dict[str, list[str]] = {}
    for row in comp.rows:
        if row.note:
            rows.setdefault(row.note, []).append(row.metric.name)
    return comp.notes + [f"{', '.join(names)}: {note}" for note, names in rows.items()]


def print_report(report: Report, console: Console) -> None:
    for comp, table in zip(report.comparisons, console_tables(report), strict=True):
        console.print(table)
        for note in comparison_notes(comp):
            console.print(Text(f"note: {note}"))
    console.print(Text(legend(report), style="dim"))
    for note in report.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    console.print(Text(verdict(report), style="bold red" if report.regressions else "green"))
