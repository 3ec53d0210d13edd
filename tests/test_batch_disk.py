"""A result that cannot be written (disk full, file too large, I/O error) stops the batch job
cleanly: nothing more is sent, the files keep whole records only, one line says what to do,
and the same command resumes the job later to exactly once."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from engine.batch import BadLine, ResultStore, StoreWriteError, run_batch
from engine.cli.batch import EXIT_WRITE_FAILED
from engine.client import Engine
from engine.mock import MockConfig
from tests.test_batch import PROJECT, assert_exactly_once, config, make_input, records

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import MockFactory

RECORD_START = b'{"id":"batch_req_'  # how every line the store writes begins


class FullDisk:
    """Replaces `os.write` so that the `fail_at`-th record written to `path` fails the way a
    full disk fails: a short write of its first bytes, then ENOSPC on the rest."""

    def __init__(self, path: Path, fail_at: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.fail_at = fail_at
        self.records = 0
        self.failed = False
        self.torn = False
        self._write = os.write
        monkeypatch.setattr(os, "write", self.write)

    def _is_target(self, fd: int) -> bool:
        return self.path.exists() and os.fstat(fd).st_ino == self.path.stat().st_ino

    def write(self, fd: int, data: Any) -> int:
        if self.torn:  # the rest of the record that was cut short
            self.torn = False
            self.failed = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if bytes(data[: len(RECORD_START)]) == RECORD_START and self._is_target(fd):
            self.records += 1
            if self.records == self.fail_at:
                self.torn = True
                return self._write(fd, data[:10])
        return self._write(fd, data)


def whole_json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the file, each a whole JSON record ending in a newline."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path} ends in a torn record"
    return [orjson.loads(line) for line in data.splitlines()]


def test_a_failed_write_is_cut_back_to_the_last_whole_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    with ResultStore(out, err) as store:
        store.open()
        for line in (1, 2):
            store.write_bad_line(BadLine(line, f"b{line}", f"line {line}: nope"))
        before = err.read_bytes()
        disk = FullDisk(err, 1, monkeypatch)
        with pytest.raises(StoreWriteError) as info:
            store.write_bad_line(BadLine(3, "b3", "line 3: nope"))
        assert disk.failed
        assert err.read_bytes() == before  # the 10 bytes that got out are gone again
        store.write_bad_line(BadLine(4, "b4", "line 4: nope"))  # space came back
    assert [r["custom_id"] for r in whole_json_lines(err)] == ["b1", "b2", "b4"]
    assert info.value.error.errno == errno.ENOSPC
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {err}: No space left on device (ENOSPC);")
    assert message.endswith("free disk space, then run the same command to resume")


@pytest.mark.parametrize("target", ["output", "errors"])
async def test_a_failed_write_stops_the_job_and_the_rerun_completes_it(
    tmp_path: Path,
    mock_factory: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: str,
) -> None:
    mock = mock_factory(MockConfig(itl_ms=2.0, output_tokens=16))
    path = make_input(tmp_path / "in.jsonl", 120)
    with path.open("ab") as f:  # bad lines between the requests: records of the errors file
        for i in range(120):
            f.write(b"{broken %d\n" % i)
            f.write(
                orjson.dumps(
                    {
                        "custom_id": f"more-{i}",
                        "method": "POST",
                        "url": "/v1/responses",
                        "body": {"model": "m", "input": "x"},
                    }
                )
                + b"\n"
            )
    cfg = config(tmp_path, mock.base_url, concurrency=8)
    out, err = cfg.output_path, tmp_path / "out.errors.jsonl"
    disk = FullDisk(out if target == "output" else err, 12, monkeypatch)
    sent: list[bool] = []  # per request: was the disk already full when it went out?
    cancelled: list[str] = []
    run = Engine.run

    async def recorded(engine: Engine, *args: Any, **kwargs: Any) -> Any:
        sent.append(disk.failed)
        try:
            return await run(engine, *args, **kwargs)
        except asyncio.CancelledError:
            cancelled.append(kwargs["custom_id"])
            raise

    monkeypatch.setattr(Engine, "run", recorded)
    with pytest.raises(StoreWriteError) as info:
        await run_batch(cfg)
    assert info.value.error.errno == errno.ENOSPC
    assert disk.failed
    assert not any(sent), "a request was sent after the failed write"
    saved = whole_json_lines(out if target == "output" else err)
    # The twelfth was cut back; requests that finished in the same tick may follow it.
    assert 11 <= len(saved) < 11 + 8
    # Every request sent ended in a whole record, the one that failed, or was cancelled.
    failed_request = 1 if target == "output" else 0
    assert len(sent) == len(whole_json_lines(out)) + failed_request + len(cancelled)
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    assert "never retrieved" not in caplog.text

    monkeypatch.undo()  # space came back: the same job again
    summary = await run_batch(cfg)
    assert summary.repaired_bytes == 0  # nothing torn was left behind
    expected = {f"req-{i}" for i in range(120)} | {f"more-{i}" for i in range(120)}
    expected |= {f"line-{121 + 2 * i}" for i in range(120)}
    assert_exactly_once(expected, out, err)
    assert sum(mock.stats.requests.values()) <= len(sent) + summary.succeeded


# Runs argv[2:] as a Python command with a file-size limit of argv[1] bytes; SIGXFSZ is
# ignored (Python ignores it anyway), so a write past the limit fails with EFBIG.
WITH_FILE_SIZE_LIMIT = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE,
                   (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def run_batch_cli(
    args: list[str],
    file_size_limit: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """`python -m engine batch ARGS` in a child process, optionally with RLIMIT_FSIZE."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "engine", "batch", "--no-progress", *args]
    if file_size_limit is not None:
        command = [sys.executable, "-c", WITH_FILE_SIZE_LIMIT, str(file_size_limit), *command[1:]]
    return subprocess.run(
        command, cwd=PROJECT, env=env, capture_output=True, timeout=120, check=False
    )


def test_file_too_large_stops_with_one_line_and_resumes(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    mock = mock_factory(MockConfig(itl_ms=1.0, output_tokens=16))
    n, concurrency, limit = 200, 4, 30_000
    path = make_input(tmp_path / "in.jsonl", n)
    out, err = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    args = [
        str(path),
        "-o",
        str(out),
        "--base-url",
        mock.base_url,
        "--concurrency",
        str(concurrency),
    ]

    full = run_batch_cli(args, file_size_limit=limit)
    stderr = full.stderr.decode()
    assert full.returncode == EXIT_WRITE_FAILED == 3, stderr
    assert len(stderr.splitlines()) == 1, stderr  # one line: no traceback, no task warnings
    assert stderr.startswith(f"stream-engine batch: cannot write {out}: File too large (EFBIG);")
    assert stderr.rstrip().endswith(
        "raise the file-size limit (ulimit -f), then run the same command to resume"
    )
    saved = whole_json_lines(out)
    assert whole_json_lines(err) == []
    assert 0 < len(saved) < n
    assert out.stat().st_size <= limit
    # Dispatch stopped at the failure: what reached the server is what was saved, the
    # record that failed and the others in flight with it, no more.
    assert sum(mock.stats.requests.values()) <= len(saved) + concurrency

    again = run_batch_cli([*args, "--json"])
    assert again.returncode == 0, again.stderr.decode()
    summary = orjson.loads(again.stdout)
    assert (summary["already_done"], summary["repaired_bytes"]) == (len(saved), 0)
    assert summary["succeeded"] == n - len(saved)
    assert_exactly_once({f"req-{i}" for i in range(n)}, out, err)
    assert len(records(out)) == n
