"""The load tester against a server that misbehaves on purpose (tests/hostile.py): a 429 that
asks to wait, streams that never end, lines that never end; bounded requests, time and memory,
and every request sent reported by how it ended."""

from __future__ import annotations

import dataclasses
import gc
import io
import os
import re
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from rich.console import Console

from engine.config import COMMAND_TIMEOUTS
from engine.loadtest import LoadConfig, run_load
from engine.loadtest import runner as runner_module
from engine.loadtest.garbage import drop_frames
from engine.loadtest.runner import BENCH_MAX_EVENT_BYTES
from engine.report.console import print_summary
from tests.helpers import bench_flags
from tests.hostile import HostileServer
from tests.test_hostile import CHILD, MAX_RSS_MB

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
RETRY_AFTER_S = 2.0  # what tests/hostile.py's "429" asks


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def bench(
    *args: str, out: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], float, float]:
    """`stream-engine bench` in a child: the result, its JSON, wall time (s), peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    env.pop("OPENAI_BASE_URL", None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "bench", *bench_flags(*args, out=out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    wall_s = time.monotonic() - started
    found = re.search(r"maxrss_kib=(\d+)", proc.stderr)
    rss_mb = int(found.group(1)) / 1024 if found else float("nan")
    return proc, orjson.loads(out.read_bytes()), wall_s, rss_mb


def _console_text(doc: dict[str, Any]) -> str:
    console = Console(file=io.StringIO(), width=250)
    print_summary(doc, console)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_closed_loop_users_wait_as_a_429_asks(hostile: HostileServer, tmp_path: Path) -> None:
    """With --retries 0 a closed loop used to send ~8,000 requests in 2 s to a server that
    answers 429 + Retry-After: 2. Now each user waits as asked (capped at the window's end)."""
    users, warmup_s, duration_s = 4, 1.0, 3.0
    before = hostile.requests.get("429", 0)
    proc, doc, wall_s, _ = bench(
        "--base-url",
        hostile.url("429"),
        "--retries",
        "0",
        "--concurrency",
        str(users),
        "--warmup",
        str(warmup_s),
        "--duration",
        str(duration_s),
        out=tmp_path / "r.json",
    )
    sent = hostile.requests["429"] - before
    assert proc.returncode == 1  # nothing completed
    # Each user: one request, then one every 2 s of the run; plus one primer per user.
    assert sent <= users * ((warmup_s + duration_s) / RETRY_AFTER_S + 1) + users + 2
    assert wall_s < 60
    assert doc["completed"] == 0
    assert doc["errors"] == {"http_429": doc["failed"]}
    asked = doc["retry_after"]
    assert asked["requests"] == doc["failed"] >= users
    assert asked["max_s"] == RETRY_AFTER_S
    assert asked["waits"] >= users
    assert asked["waited_s"] >= users * 1.0  # 2 s each, cut short only by the window's end
    assert "answers asked to wait (up to 2 s); users waited" in proc.stderr


async def test_open_loop_keeps_its_schedule_and_says_the_server_asked(
    hostile: HostileServer,
) -> None:
    config = LoadConfig(
        hostile.url("429"), rate=20, arrival="constant", duration_s=1.0, warmup_s=0, canary=False
    )
    doc = (await run_load(config)).summary()
    assert doc["failed"] == 20  # the whole schedule: an open loop does not slow down
    asked = doc["retry_after"]
    assert (asked["requests"], asked["waits"], asked["waited_s"]) == (20, 0, 0.0)
    assert "20 answers asked to wait (up to 2 s); the open loop kept its schedule" in (
        _console_text(doc)
    )


@pytest.mark.parametrize("behaviour", ["drip", "stall"])
def test_a_stream_that_never_sends_an_event_ends_within_the_limits(
    hostile: HostileServer, tmp_path: Path, behaviour: str
) -> None:
    """Comments only (drip) or silence after the headers (stall): each request ends by its
    phase limits, and the report counts the failures by kind."""
    proc, doc, wall_s, _ = bench(
        "--base-url",
        hostile.url(behaviour),
        "--idle-timeout",
        "0.5",
        "--first-token-timeout",
        "1",
        "--duration",
        "2",
        "--concurrency",
        "4",
        out=tmp_path / "r.json",
    )
    assert proc.returncode == 1
    assert wall_s < 30  # 1 s warm-up + 2 s + start-up; the server would go on for 60 s
    assert doc["completed"] == 0
    assert doc["failed"] >= 4
    assert set(doc["errors"]) <= {"IdleTimeout", "FirstTokenTimeout"}
    assert sum(doc["errors"].values()) == doc["failed"]
    kind = next(iter(doc["errors"]))
    assert f"{kind}: {doc['errors'][kind]}" in proc.stderr


@pytest.mark.parametrize(
    "shape", [{"concurrency": 3}, {"rate": 6.0, "arrival": "constant"}], ids=["closed", "open"]
)
@pytest.mark.parametrize("behaviour", ["drip", "stall"])
async def test_requests_still_in_flight_when_the_run_ends_are_failed_unfinished(
    hostile: HostileServer, monkeypatch: pytest.MonkeyPatch, behaviour: str, shape: dict[str, Any]
) -> None:
    """Limits far beyond the run (60 s): without a cut-off every request of the window would
    still be waiting, and the closed loop's, sent during the warm-up, would not count at all:
    "0 completed, 0 failed". They are cut off after the grace and counted as Unfinished."""
    monkeypatch.setattr(runner_module, "PRIME_LIMIT_S", 0.5)
    config = LoadConfig(
        hostile.url(behaviour),
        duration_s=1.0,
        warmup_s=0.5,
        grace_s=0.5,
        timeouts=dataclasses.replace(COMMAND_TIMEOUTS, idle_s=60, first_token_s=60),
        canary=False,
        **shape,
    )
    started = time.monotonic()
    result = await run_load(config)
    wall_s = time.monotonic() - started
    doc = result.summary()
    assert wall_s < 15  # priming 0.5 s (its own cut-off) + 1.5 s + the 0.5 s grace + start-up
    assert doc["completed"] == 0
    assert doc["errors"] == {"Unfinished": doc["failed"]}
    assert doc["failed"] == (3 if "concurrency" in shape else 9)  # every request sent
    assert doc["warmup"]["primer_errors"] == {"Unfinished": doc["warmup"]["connections_primed"]}
    detail = doc["error_details"]["Unfinished"]
    assert detail["messages"] == [
        "no end within 0.5 s after the load's last send: cut off when the run ended (--grace)"
    ]
    # Each ran until the cut-off: the last one sent had the grace, the others longer.
    assert all(r.e2e_ms is not None and r.e2e_ms >= 450 for r in result.measured)
    assert "0 completed, 0 failed" not in _console_text(doc)


@pytest.mark.parametrize(
    ("behaviour", "users", "seconds"), [("endless-line", 4, 7), ("empty-flood", 2, 2)]
)
def test_memory_stays_bounded_while_requests_fail_on_the_event_cap(
    hostile: HostileServer, tmp_path: Path, behaviour: str, users: int, seconds: int
) -> None:
    """The cyclic collector is off while a run measures; each failure's traceback used to keep
    the frames it passed through, with their read chunks, until the next collection: endless
    line, 4 streams, 7 s, 309 MB peak with 254 failures, and rising; with the frames cleared
    125 MB with 366. What stays is the engine's per-event cap (16 MiB, or a list entry per
    empty line) times the streams in flight, plus the process itself. No warm-up: an empty-line
    flood takes seconds per request, and the window must hold requests of its own."""
    proc, doc, _, rss_mb = bench(
        "--base-url",
        hostile.url(behaviour),
        "--duration",
        str(seconds),
        "--warmup",
        "0",
        "--concurrency",
        str(users),
        out=tmp_path / "r.json",
    )
    assert proc.returncode == 1
    assert rss_mb <= MAX_RSS_MB, f"peak RSS {rss_mb:.0f} MB"
    assert doc["completed"] == 0
    assert doc["errors"] == {"ProtocolError": doc["failed"]}
    assert doc["failed"] >= users
    assert doc["error_details"]["ProtocolError"]["messages"][0].startswith(
        f"SSE event exceeds {BENCH_MAX_EVENT_BYTES} bytes"
    )


def test_a_failures_frames_are_freed_at_once_with_the_collector_off() -> None:
    class Chunk:
        """Stands for a read buffer a frame holds (bytes cannot be weakly referenced)."""

    def parse(chunk: Chunk) -> None:
        raise ValueError("too big")

    def read() -> None:
        chunk = Chunk()
        parse(chunk)

    def fail() -> None:
        try:
            read()
        except ValueError as inner:
            raise RuntimeError("wrapped") from inner

    enabled = gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(RuntimeError) as caught:
            fail()
        error = caught.value
        cause = error.__cause__
        assert cause is not None
        assert cause.__traceback__ is not None
        tb = cause.__traceback__.tb_next
        assert tb is not None
        held = weakref.ref(tb.tb_frame.f_locals["chunk"])
        del tb, caught
        drop_frames(error)
        assert (error.__traceback__, cause.__traceback__) == (None, None)
        assert held() is None  # freed by reference counting, no collection needed
    finally:
        if enabled:
            gc.enable()


def test_an_unfinished_run_never_prints_nothing_happened(
    hostile: HostileServer, tmp_path: Path
) -> None:
    """The CLI end to end: a stalled server, long limits, a short grace."""
    proc, doc, wall_s, _ = bench(
        "--base-url",
        hostile.url("stall"),
        "--first-token-timeout",
        "60",
        "--idle-timeout",
        "60",
        "--grace",
        "0.5",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--concurrency",
        "2",
        out=tmp_path / "r.json",
    )
    assert proc.returncode == 1
    assert wall_s < 40  # priming (cut off after PRIME_LIMIT_S) + 1 s + 0.5 s + start-up
    assert doc["errors"] == {"Unfinished": 2}
    assert "0 completed, 2 failed" in proc.stderr
    assert "Unfinished" in proc.stderr
