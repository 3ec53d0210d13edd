"""The words the console and the HTML page share: a document's figures as short lines.

Every function here reads a result document (docs/loadtest.md's schema) and returns plain
text; each view escapes it its own way (rich `Text`, HTML)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

from engine.loadtest.result import SATURATION_RULE, saturation_index
from engine.loadtest.selfcheck import steal_text

if TYPE_CHECKING:
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
# Taking a free connection from the pool costs microseconds: a request that took this long
# or longer waited for one (the row is shown only then).
POOL_WAIT_SHOWN_MS = 0.1


def shown(row: dict[str, Any] | None, key: str) -> TypeGuard[dict[str, Any]]:
    """Rows with values; pool wait only when some request waited (it is ~0 when all is
    well). A row the document lacks (written by an older version) is not shown."""
    if not row or not row["count"]:
        return False
    return key != "pool_wait_ms" or row["max"] >= POOL_WAIT_SHOWN_MS


def counts_text(counts: Mapping[str, int]) -> str:
    """`{"stop": 90, "length": 29}` -> "stop: 90, length: 29"."""
    return ", ".join(f"{key}: {n}" for key, n in counts.items())


def statuses_text(statuses: Mapping[str, int]) -> str:
    """The HTTP statuses an error kind came with; "none" is a failure before any answer."""
    names = {s: "no HTTP status" if s == "none" else f"HTTP {s}" for s in statuses}
    if len(statuses) == 1:
        return next(iter(names.values()))
    return ", ".join(f"{names[s]}: {n}" for s, n in statuses.items())


# The client's state (`client.state`) as a label; a document written before `state` existed
# has only `bottleneck`.
STATES = {
    "ok": "OK",
    "client-bound": "CLIENT-BOUND",
    "busy-machine": "BUSY MACHINE",
    "server-failing": "SERVER FAILING",
}


def client_state(doc: Mapping[str, Any]) -> tuple[str, bool]:
    """The client check's label and whether it says the latencies are not the server's
    alone (a bad state)."""
    client = doc["client"]
    state = client.get("state") or ("client-bound" if client["bottleneck"] else "ok")
    return STATES[state], state != "ok"


def machine_text(doc: Mapping[str, Any]) -> str | None:
    """Who used the machine's CPU during the run (None: not measured, e.g. not Linux)."""
    machine = doc["client"].get("machine")
    if not machine:
        return None
    return (
        f"{machine['bench_cores']:.2f} of {machine['cores']} cores used by this run's processes, "
        f"{machine['others_cores']:.2f} by others{steal_text(machine)}"
    )


END_WORDS = {
    "stop": "ended by the model (stop)",
    "length": "cut at the output cap (length)",
    "tool_calls": "ended with tool calls",
    "function_call": "ended with a function call",
    "content_filter": "stopped by a content filter",
    "none": "with no end reason from the server",
}
# The same, for answers that ended before the length the load asked for.
SHORT_WORDS = END_WORDS | {
    "stop": "stopped by the model short of it (stop)",
    "length": "cut short of it (length)",
}


def ends_text(doc: Mapping[str, Any]) -> str:
    """How the completed requests ended, in words that say whether that was asked for: "at
    the requested length" when the load asked for it and got it, where the API's word
    ("length", "incomplete") reads like a cut-off or a failure."""
    asked = doc.get("requested_length")
    words = SHORT_WORDS if asked else END_WORDS
    ends = [
        f"{n} {words.get(reason, f'ended: {reason}')}"
        for reason, n in (asked["short"] if asked else doc["end_reasons"]).items()
    ]
    if asked:
        spread = ((doc.get("lengths") or {}).get("output") or {}).get("asked") or {}
        tokens = (
            f"asked per request: {spread['min']:g}-{spread['max']:g} tokens"
            if spread.get("count") and spread["min"] != spread["max"]
            else f"{asked['tokens']} tokens"
        )
        ends.insert(0, f"{asked['reached']} at the requested length ({tokens})")
    return ", ".join(ends)


def requests_text(doc: Mapping[str, Any]) -> str:
    """ "217 completed: 217 at the requested length (64 tokens); 0 failed"."""
    ends = ends_text(doc) if doc["completed"] else ""
    text = f"{doc['completed']} completed" + (f": {ends};" if ends else ",")
    text += f" {doc['failed']} failed"
    cut = doc.get("cancelled")  # only in a document of a load that cancels on purpose
    if cut is not None:
        text += f", {cut['count']} cancelled by the client ({cut['share']:.1%} of those sent)"
    if not doc["completed"] and not doc["failed"] and not (cut and cut["count"]):
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
    """One line per error kind: how many, which statuses, when the first came, and why, in
    the message's own words (whole, as recorded: its cause is often at its end, e.g. a
    connect error's `[Too many open files]`)."""
    messages = detail["messages"]
    message = messages[0] if messages else "(no message)"
    return (
        f"{detail['count']} x {statuses_text(detail['statuses'])}, first at "
        f"{detail['first_at_s']:.2f} s: {message}"
    )


def saturation_text(docs: Sequence[Mapping[str, Any]]) -> str:
    index = saturation_index(docs)
    if index is None:
        return "saturation point: none (no step completed a request)"
    doc = docs[index]
    return (
        f"saturation point: {doc['label']} ({doc['request_throughput']:.2f} req/s, TTFT "
        f"p99 {doc['ttft_ms']['p99']:.1f} ms): {SATURATION_RULE}"
    )
