"""Issue 21, the bench half: a bad day loses nothing.

A wrong host or key ends the bench at its first request; an output that cannot be written is
refused before any request; a server that goes away mid-run stops the load and the run keeps
what it measured; SIGINT and SIGTERM keep it too; and no child outlives the bench, even one
killed with SIGKILL. Every wait here is on a state (a line, a counter, a pid) with a deadline.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from engine.errors import AuthenticationError, ConnectError, StreamTruncated
from engine.loadtest import LoadConfig
from engine.loadtest.interrupts import JOB_FAILURE, JOB_FAILURE_WINDOW_S, FailureWatch, Halt
from engine.loadtest.openfiles import FD_RESERVE, fit_open_files
from tests.conftest import bench_main
from tests.helpers import bench_child

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.mock import MockServerThread
    from tests.conftest import MockFactory

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--warmup", "0.3", "--no-canary", "-q"]
# The first measured result in a log's progress line: the load is measuring.
MEASURING = re.compile(r"bench: measuring .* done [1-9]")


def closed_port() -> int:
    """A port nothing listens on: bound, then closed (the kernel does not hand it out again
    at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def until(check: Callable[[], object], deadline_s: float, what: str) -> None:
    """Poll `check` until it holds; fail naming `what` after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline_s} s: {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """A process that still runs (a zombie has ended: no reaper may ever collect it here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children of children too), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def sent(server: MockServerThread) -> int:
    """Requests the mock has seen: answered, or refused for their key."""
    return sum(server.stats.requests.values()) + server.stats.unauthorized


# --- the first request goes alone -------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 3])
def test_a_closed_port_ends_the_bench_at_its_first_request(
    retries: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    status = bench_main(
        ["--base-url", url, "--duration", "5", "--retries", str(retries), "--output-dir",
         str(tmp_path / "run"), *QUICK]
    )  # fmt: skip
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert status == 2
    assert took < 5.0, took
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: the server cannot be reached: {url}/responses: ")
    assert "CLIENT-BOUND" not in err
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("workers", [1, 2])
def test_a_refused_key_ends_the_bench_having_sent_one_request_per_worker(
    workers: int,
    auth_mock_server: MockServerThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = "sk-wrong-and-secret-7f3a"
    before = sent(auth_mock_server)
    started = time.monotonic()
    status = bench_main(
        ["--base-url", auth_mock_server.base_url, "--api-key", key, "--retries", "2",
         "--workers", str(workers), "--duration", "5", "--output-dir", str(tmp_path / "run"),
         *QUICK]
    )  # fmt: skip
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert status == 2
    assert took < (5.0 if workers == 1 else 15.0), took  # spawning workers takes its time
    assert sent(auth_mock_server) - before == workers  # each worker's first request, alone
    assert f"error: the server refused the API key: {auth_mock_server.base_url}/responses" in err
    assert key not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--output-dir", "-o", "--csv", "--html"])
def test_an_unwritable_output_is_refused_before_any_request(
    flag: str, mock_server: MockServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "results" / "out"
    before = sent(mock_server)
    argv = ["--base-url", mock_server.base_url, "--duration", "5", *QUICK, flag, str(target)]
    if flag != "--output-dir":
        argv.append("--no-save")
    status = bench_main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert sent(mock_server) == before  # not one request
    assert f"error: results cannot be written to {target}: " in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


# --- a server gone mid-run -----------------------------------------------------------------


def test_a_server_gone_mid_run_stops_the_load_and_keeps_what_it_measured(
    mock_factory: MockFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = mock_factory(ttft_ms=5.0, itl_ms=1.0, output_tokens=8)

    def stop_when_measuring() -> None:  # the window opens at 0.3 s; 100 requests take ~1 s
        end = time.monotonic() + 30
        while sum(server.stats.requests.values()) < 100 and time.monotonic() < end:
            time.sleep(0.02)
        server.stop()

    stopper = threading.Thread(target=stop_when_measuring, daemon=True)
    stopper.start()
    started = time.monotonic()
    status = bench_main(
        ["--base-url", server.base_url, "--duration", "30", "--concurrency", "4",
         "--output-dir", str(tmp_path / "run"), *QUICK]
    )  # fmt: skip
    took = time.monotonic() - started
    stopper.join()
    err = capsys.readouterr().err
    assert status == 2
    assert took < 15.0, took  # not the 30 s asked for
    doc = orjson.loads((tmp_path / "run" / "result.json").read_bytes())
    assert doc["interrupted"]["by"] == JOB_FAILURE
    message = doc["interrupted"]["message"]
    assert f"every request failed for {JOB_FAILURE_WINDOW_S:g} s" in message
    assert f"the server cannot be reached: {server.base_url}/responses" in message
    assert doc["completed"] > 0
    assert doc["failed"] > 0
    assert "CLIENT-BOUND" not in err
    assert "not judged" in doc["client"]["verdict"]
    assert not doc["client"]["bottleneck"]
    assert f"interrupted: {message}; what was measured is kept" in err


def test_the_failure_watch_needs_the_same_job_failure_throughout_the_window() -> None:
    url = "http://h/v1/responses"
    refused = ConnectError("cannot connect")
    key = AuthenticationError("HTTP 401: Incorrect API key sk-abc", status=401)
    window_ns = int(JOB_FAILURE_WINDOW_S * 1e9)
    watch = FailureWatch(url, ("sk-abc",))
    assert watch.failure(refused, 0) is None
    assert watch.failure(refused, window_ns - 1) is None
    halt = watch.failure(refused, window_ns)
    assert halt is not None
    assert halt.by == JOB_FAILURE
    assert halt.exit_status == 2
    watch = FailureWatch(url, ("sk-abc",))
    watch.failure(refused, 0)
    watch.success()  # a success starts the window again
    assert watch.failure(refused, window_ns) is None
    watch.failure(StreamTruncated("cut"), window_ns)  # a request's own failure: too
    assert watch.failure(refused, 2 * window_ns) is None
    assert watch.failure(key, 3 * window_ns) is None  # another cause: a new window
    halt = watch.failure(key, 4 * window_ns)
    assert halt is not None
    assert "sk-abc" not in halt.message
    assert "the server refused the API key" in halt.message
    assert Halt.signal(signal.SIGINT).exit_status == 130
    assert Halt.signal(signal.SIGTERM).exit_status == 143


# --- signals -------------------------------------------------------------------------------


def start_bench(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`python -m engine.loadtest` on the embedded mock, its stderr in a file we can poll."""
    err = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_BASE_URL", None)
    argv = [
        sys.executable, "-m", "engine.loadtest", "--duration", "60", "--warmup", "0.3",
        "--concurrency", "4", "--mock-ttft-ms", "20", "--mock-itl-ms", "2",
        "--output-dir", str(tmp_path / "run"), *flags,
    ]  # fmt: skip
    with err.open("wb") as sink:
        proc = subprocess.Popen(argv, stderr=sink, stdout=subprocess.DEVNULL, env=env)
    return proc, err


def wait_measuring(proc: subprocess.Popen[bytes], err: Path) -> set[int]:
    """Until the bench's progress line shows a measured request; returns its processes."""
    until(
        lambda: proc.poll() is not None or MEASURING.search(err.read_text()),
        30.0,
        "a measured request",
    )
    assert proc.poll() is None, err.read_text()
    return descendants(proc.pid)


@pytest.mark.parametrize(
    ("sig", "workers"),
    [
        pytest.param(signal.SIGINT, "1", id="SIGINT"),
        pytest.param(signal.SIGTERM, "1", id="SIGTERM"),
        pytest.param(signal.SIGTERM, "2", id="SIGTERM-two-workers"),
    ],
)
def test_a_signal_ends_the_bench_and_keeps_what_it_measured(
    sig: signal.Signals, workers: str, tmp_path: Path
) -> None:
    proc, err = start_bench(tmp_path, "--workers", workers)
    try:
        children = wait_measuring(proc, err)
        assert len(children) >= 1 + (int(workers) if workers != "1" else 0)  # mock, workers
        proc.send_signal(sig)
        status = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.read_text()
    assert status == 128 + sig.value, text
    assert "Traceback" not in text
    assert f"interrupted: {sig.name} received" in text
    doc = orjson.loads((tmp_path / "run" / "result.json").read_bytes())
    assert doc["interrupted"]["by"] == sig.name
    assert doc["completed"] >= 1
    assert doc["config"]["workers"] == int(workers)
    until(lambda: not any(alive(pid) for pid in children), 10.0, f"children {children} gone")


def test_a_bench_killed_hard_leaves_no_child_behind(tmp_path: Path) -> None:
    proc, err = start_bench(tmp_path, "--workers", "2")
    try:
        children = wait_measuring(proc, err)
        assert len(children) >= 4, children  # the mock, the canary, two workers
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    until(lambda: not any(alive(pid) for pid in children), 10.0, f"children {children} gone")


FD_LIMIT = 256


def _few_open_files() -> None:
    """In the child before it runs: a machine whose limit is FD_LIMIT, soft and hard."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_a_load_beyond_the_open_files_limit_runs_what_fits_and_says_so(tmp_path: Path) -> None:
    """300 streams need a socket each in the embedded mock's process and in the workers:
    past the limit, connects fail and the mock stops accepting (hundreds of failures). The
    bench runs at the concurrency that fits, having said so before the first request."""
    flags = ["--concurrency", "300", "--duration", "1", "--warmup", "0.3"]
    proc, doc = bench_child(
        *flags, "--output-tokens", "16", out=tmp_path / "r.json", preexec_fn=_few_open_files
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc is not None
    said = [line for line in proc.stderr.splitlines() if line.startswith("open files:")]
    if doc["config"]["concurrency"] < 300:
        assert len(said) == 1
        assert f"over the limit of {FD_LIMIT} (ulimit -n)" in said[0]
        assert f"running {doc['config']['concurrency']} users" in said[0]
        assert doc["config"]["facts"]["open_files"]["limit"] == FD_LIMIT
    assert (doc["failed"], doc["warmup"]["failed"]) == (0, 0)
    assert doc["completed"] >= doc["config"]["concurrency"]


@pytest.mark.parametrize(
    ("shape", "embedded", "kept"),
    [
        ({"concurrency": 300, "workers": 2}, True, {"concurrency": 208}),  # the mock holds all
        ({"concurrency": 300, "workers": 2}, False, None),  # 150 per worker: fits
        ({"concurrency": 500, "workers": 2}, False, {"concurrency": 416}),
        ({"rate": 50.0, "workers": 2}, True, {"max_connections": 104}),  # pools, not the load
        ({"concurrency": 100, "workers": 1}, True, None),
    ],
    ids=["mock-bound", "fits-in-workers", "worker-bound", "open-loop-pool", "fits"],
)
def test_what_fits_the_open_files_limit(
    shape: dict[str, Any], embedded: bool, kept: dict[str, int] | None
) -> None:
    config = LoadConfig("http://x/v1", **shape)
    fitted, said = fit_open_files(config, FD_LIMIT, embedded_mock=embedded, cores=2)
    if kept is None:
        assert (fitted, said) == (config, None)
        return
    assert {key: getattr(fitted, key) for key in kept} == kept
    assert fitted.facts["open_files"] == {"limit": FD_LIMIT, "reserve": FD_RESERVE, **kept}
    assert (said is None) == ("max_connections" in kept)  # a default pool is only capped
    assert fit_open_files(config, 1 << 20, embedded_mock=embedded, cores=2) == (config, None)
