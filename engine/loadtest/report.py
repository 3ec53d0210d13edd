"""Reports: the console summary (rich), live progress, JSON and per-request CSV.

The console shows the client's self-check right under the latency table, because a TTFT
measured by a saturated client is a number about the client.
"""

from __future__ import annotations

import csv
import itertools
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeGuard

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from engine.loadtest.metrics import CSV_COLUMNS, csv_row
from engine.loadtest.result import SCHEMA_VERSION, BenchResult

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Mapping, Sequence

LATENCIES = (
    ("TTFT", "ttft_ms"),
    ("TTFT to text", "ttft_text_ms"),
    ("ITL", "itl_ms"),
    ("TPOT", "tpot_ms"),
    ("E2E", "e2e_ms"),
    ("schedule lag", "schedule_lag_ms"),
    ("pool wait", "pool_wait_ms"),
    ("connect", "connect_ms"),
)
COLUMNS = ("p50", "p90", "p95", "p99", "p999", "mean", "max")
EXAMPLE_CHARS = 120  # one error message per kind on the console: a line, not a body
RUNS_DIR = "stream-engine-runs"  # under the current directory: every run leaves its results
RUN_FILES = {"json": "result.json", "csv": "requests.csv", "html": "report.html"}
LOG_EVERY_S = 5.0  # the progress line's period when stderr is a log, not a terminal
# The sweep's saturation point (docs/loadtest.md): the last step, in order of achieved
# throughput, whose throughput still grew by more than this over the step before ...
SATURATION_GROWTH = 0.05
# ... while its TTFT p99 stayed within this factor of the lightest step's.
SATURATION_TTFT_FACTOR = 2.0
SATURATION_RULE = (
    f"the last step, in order of achieved request throughput, whose throughput "
    f"grew by more than {SATURATION_GROWTH:.0%} over the step before while its "
    f"TTFT p99 stayed within {SATURATION_TTFT_FACTOR:g}x of the lightest step's"
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def shown(row: dict[str, Any] | None, key: str) -> TypeGuard[dict[str, Any]]:
    """Rows with values; pool wait only when some request waited (it is 0 when all is well).
    A row the document lacks (written by an older version) is not shown."""
    if not row or not row["count"]:
        return False
    return key != "pool_wait_ms" or bool(row["max"])


def counts_text(counts: Mapping[str, int]) -> str:
    """`{"stop": 90, "length": 29}` -> "stop: 90, length: 29"."""
    return ", ".join(f"{key}: {n}" for key, n in counts.items())


def statuses_text(statuses: Mapping[str, int]) -> str:
    """The HTTP statuses an error kind came with; "none" is a failure before any answer."""
    names = {s: "no HTTP status" if s == "none" else f"HTTP {s}" for s in statuses}
    if len(statuses) == 1:
        return next(iter(names.values()))
    return ", ".join(f"{names[s]}: {n}" for s, n in statuses.items())


def requests_text(doc: dict[str, Any]) -> str:
    incomplete = f" ({doc['incomplete']} incomplete)" if doc["incomplete"] else ""
    text = f"{doc['completed']} completed{incomplete}, {doc['failed']} failed"
    if not doc["completed"] and not doc["failed"]:
        text += " (no request was sent in the measured window: see warm-up)"
    return text


def tokens_text(doc: dict[str, Any]) -> str:
    """Input and output totals, with the cached and reasoning shares the server reported."""
    cached = doc.get("cached_tokens") or 0
    reasoning = doc.get("reasoning_tokens") or 0
    inputs = f"{doc['input_tokens']} in" + (f" ({cached} cached)" if cached else "")
    outputs = f"{doc['output_tokens']} out" + (f" ({reasoning} reasoning)" if reasoning else "")
    calls = doc.get("tool_calls") or 0
    return f"{inputs}, {outputs}" + (f", {calls} tool calls" if calls else "")


def retry_after_text(doc: dict[str, Any]) -> str | None:
    """How often the server asked to slow down, and what the load did about it."""
    asked = doc.get("retry_after")
    if not asked or not asked["requests"]:
        return None
    text = f"{asked['requests']} answers asked to wait (up to {asked['max_s']:g} s)"
    if doc["mode"] == "open":
        return text + "; the open loop kept its schedule"
    return text + f"; users waited {asked['waits']} times, {asked['waited_s']:.1f} s in total"


def warmup_text(doc: dict[str, Any]) -> str:
    warm = doc["warmup"]
    failed = ""
    if warm.get("failed"):
        kinds = counts_text(warm["errors"]) if warm.get("errors") else ""
        failed = f" ({warm['failed']} failed" + (f": {kinds})" if kinds else ")")
    return (
        f"{warm['requests']} requests{failed} over {warm['seconds']:g} s, "
        f"{warm['connections_primed']} connections primed, "
        f"{warm['connections_opened_during_measurement']} opened later"
    )


def reconnects_text(doc: dict[str, Any]) -> str:
    return f"{doc['reconnects']} (a pooled connection was dead: sent again, not a failure)"


def error_example(detail: dict[str, Any]) -> str:
    """One line per error kind: how many, which statuses, when the first came, and why."""
    messages = detail["messages"]
    message = messages[0] if messages else "(no message)"
    if len(message) > EXAMPLE_CHARS:
        message = message[:EXAMPLE_CHARS] + "…"
    return (
        f"{detail['count']} x {statuses_text(detail['statuses'])}, first at "
        f"{detail['first_at_s']:.2f} s: {message}"
    )


def latency_table(doc: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("ms")
    for name in COLUMNS:
        table.add_column(name.replace("p999", "p99.9"), justify="right")
    for label, key in LATENCIES:
        row = doc.get(key)
        if shown(row, key):
            table.add_row(label, *(_ms(row[c]) for c in COLUMNS))
    return table


def totals_table(doc: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    good = doc["goodput"]
    rows = [
        ("mode", f"{doc['mode']} loop, {doc['duration_s']:.2f} s measured"),
        ("requests", requests_text(doc)),
        (
            "throughput",
            (
                f"{doc['request_throughput']:.2f} req/s, "
                f"{doc['output_token_throughput']:.1f} output tok/s, "
                f"{doc['total_token_throughput']:.1f} total tok/s"
            ),
        ),
        ("tokens", tokens_text(doc)),
        ("concurrency", f"mean {doc['concurrency']['mean']}, max {doc['concurrency']['max']:g}"),
    ]
    if good is not None:
        rows.append(
            (
                "goodput",
                (
                    f"{good['request_rate']:.2f} req/s ({good['fraction']:.1%} "
                    f"of requests met {good['slo']})"
                ),
            )
        )
    if doc["end_reasons"]:
        rows.append(("end reasons", counts_text(doc["end_reasons"])))
    if doc["reconnects"]:
        rows.append(("reconnects", reconnects_text(doc)))
    if (waits := retry_after_text(doc)) is not None:
        rows.append(("Retry-After", waits))
    if doc["errors"]:
        rows.append(("errors", counts_text(doc["errors"])))
        rows.extend(
            (f"  {kind}", error_example(detail)) for kind, detail in doc["error_details"].items()
        )
    rows.append(("warm-up", warmup_text(doc)))
    for name, value in rows:  # Text: a server's message is shown as is, never as markup
        table.add_row(Text(name), Text(value))
    return table


def client_text(doc: dict[str, Any]) -> Text:
    client = doc["client"]
    lag = client["loop_lag_ms"]
    delay = client["read_delay_ms"]
    cpus = ", ".join(f"w{w['worker']} {w['busy_cpu_percent']:.0f}%" for w in client["workers"])
    read = (
        f"read delay (canary) p50 {_ms(delay['p50'])} / p99 {_ms(delay['p99'])} / max "
        f"{_ms(delay['max'])} ms; "
        if delay["count"]
        else ""
    )
    line = (
        f"client self-check: {read}loop lag p50 {_ms(lag['p50'])} / p99 {_ms(lag['p99'])} "
        f"/ max {_ms(lag['max'])} ms; CPU (busy, % of a core) {cpus}\n"
    )
    style = "bold red" if client["bottleneck"] else "green"
    return Text(line) + Text(client["verdict"], style=style)


def print_summary(doc: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    title = f"stream-engine bench {doc.get('label') or ''}".strip()
    console.print(latency_table(doc, title))
    console.print(client_text(doc))
    console.print(totals_table(doc))


def sweep_table(docs: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="sweep", title_justify="left")
    for name in (
        "run",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "TPOT p50",
        "E2E p99",
        "failed",
        "goodput/s",
        "client",
    ):
        table.add_column(name, justify="right")
    for doc in docs:
        good = doc["goodput"]
        table.add_row(
            doc["label"],
            f"{doc['request_throughput']:.2f}",
            f"{doc['output_token_throughput']:.0f}",
            _ms(doc["ttft_ms"]["p50"]),
            _ms(doc["ttft_ms"]["p99"]),
            _ms(doc["itl_ms"]["p50"]),
            _ms(doc["tpot_ms"]["p50"]),
            _ms(doc["e2e_ms"]["p99"]),
            str(doc["failed"]),
            "-" if good is None else f"{good['request_rate']:.2f}",
            "BOUND" if doc["client"]["bottleneck"] else "ok",
        )
    return table


def saturation_index(docs: Sequence[Mapping[str, Any]]) -> int | None:
    """The sweep step past which more load buys little throughput and costs latency (see
    SATURATION_RULE); None when no step completed a request. Walks the steps in order of
    achieved throughput and stops at the first that fails the rule: a later step that
    happens to pass again is noise on a saturated server, not a second knee."""
    steps = sorted(
        (i for i, d in enumerate(docs) if d["completed"] and d["ttft_ms"]["p99"] is not None),
        key=lambda i: docs[i]["request_throughput"],
    )
    if not steps:
        return None
    limit = docs[steps[0]]["ttft_ms"]["p99"] * SATURATION_TTFT_FACTOR
    found = steps[0]
    for before, step in itertools.pairwise(steps):
        grew = docs[step]["request_throughput"] > docs[before]["request_throughput"] * (
            1 + SATURATION_GROWTH
        )
        if not grew or docs[step]["ttft_ms"]["p99"] > limit:
            break
        found = step
    return found


def saturation_text(docs: Sequence[Mapping[str, Any]]) -> str:
    index = saturation_index(docs)
    if index is None:
        return "saturation point: none (no step completed a request)"
    doc = docs[index]
    return (
        f"saturation point: {doc['label']} ({doc['request_throughput']:.2f} req/s, TTFT "
        f"p99 {doc['ttft_ms']['p99']:.1f} ms): {SATURATION_RULE}"
    )


def sweep_document(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A sweep's JSON: the runs in order (each a full single-run document) and the
    saturation point, so a reader need not re-derive it."""
    index = saturation_index(docs)
    point = (
        None
        if index is None
        else {
            "run": index,
            "label": docs[index]["label"],
            "request_throughput": docs[index]["request_throughput"],
            "rule": SATURATION_RULE,
        }
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "stream-engine bench",
        "kind": "sweep",
        "runs": list(docs),
        "saturation": point,
    }


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


def progress_text(snapshots: Sequence[dict[str, Any]], title: str = "bench") -> str:
    """done / failed / in flight / rate / live TTFT p50, summed over workers' snapshots."""
    done = sum(s["done"] for s in snapshots)
    failed = sum(s["failed"] for s in snapshots)
    inflight = sum(s["inflight"] for s in snapshots)
    elapsed = max((s["elapsed_s"] for s in snapshots), default=0.0)
    ttfts = [s["ttft_p50_ms"] for s in snapshots if s["ttft_p50_ms"] is not None]
    rate = done / elapsed if elapsed > 0 else 0.0
    ttft = f"{sorted(ttfts)[len(ttfts) // 2]:.1f} ms" if ttfts else "-"
    return (
        f"{title}: {elapsed:6.1f} s  done {done}  failed {failed}  in flight "
        f"{inflight}  {rate:.1f} req/s  TTFT p50 {ttft}"
    )


class LiveProgress:
    """The progress line on a terminal, redrawn in place from every worker's snapshots."""

    def __init__(self, console: Console, title: str = "bench") -> None:
        self.console = console
        self.title = title
        self.latest: dict[int, dict[str, Any]] = {}
        self.started = time.monotonic()
        self._live = Live(self._render(), console=console, refresh_per_second=2, transient=True)

    def __call__(self, snapshot: dict[str, Any]) -> None:
        self.latest[snapshot["worker"]] = snapshot
        self._live.update(self._render())

    def _render(self) -> Group:
        return Group(Text(progress_text(list(self.latest.values()), self.title)))

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)


class LogProgress:
    """The progress line for a log, not a terminal: printed once the measured window has a
    result (a script waiting for the load to measure reads it), then every LOG_EVERY_S."""

    def __init__(self, console: Console, title: str = "bench") -> None:
        self.console = console
        self.title = title
        self.latest: dict[int, dict[str, Any]] = {}
        self._next_s = 0.0
        self._last_s = 0.0

    def __call__(self, snapshot: dict[str, Any]) -> None:
        self.latest[snapshot["worker"]] = snapshot
        elapsed = snapshot["elapsed_s"]
        if elapsed < self._last_s:  # a sweep's next segment: its own clock
            self._next_s = 0.0
        self._last_s = elapsed
        measured = sum(s["done"] + s["failed"] for s in self.latest.values())
        if measured and elapsed >= self._next_s:
            self.console.print(Text(progress_text(list(self.latest.values()), self.title)))
            self._next_s = elapsed + LOG_EVERY_S
