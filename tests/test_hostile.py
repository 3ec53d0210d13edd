"""The commands against a server that misbehaves on purpose (tests/hostile.py): bounded time,
bounded memory, no key shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from tests.hostile import HostileServer

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-hostile-secret-0123"
MAX_RSS_MB = 300  # the documented bound (docs/decisions.md): caps, not the server, decide
# Runs the CLI in a child and reports the child's own peak RSS: VmHWM of its own memory map.
# (getrusage's ru_maxrss is not the child's own: Linux carries the high-water mark of the
# pre-exec image, a copy of the parent, across exec, so a big pytest process shows up there.)
CHILD = (
    "import re, sys\n"
    "from engine.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print('maxrss_kib=' + re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "sys.exit(code)"
)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """The command, its wall time (s) and its peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": KEY}
    env.pop("OPENAI_BASE_URL", None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    found = re.search(r"maxrss_kib=(\d+)", proc.stderr)
    rss_mb = int(found.group(1)) / 1024 if found else float("nan")
    return proc, time.monotonic() - started, rss_mb


@pytest.mark.parametrize("endpoint", ["responses", "chat"])
def test_run_ends_a_comment_only_drip_within_its_limits(
    hostile: HostileServer, endpoint: str
) -> None:
    proc, wall_s, _ = cli(
        "run",
        "--base-url",
        hostile.url("drip"),
        "--endpoint",
        endpoint,
        "--idle-timeout",
        "0.5",
        "--max-retries",
        "1",
    )
    assert proc.returncode == 1
    assert "IdleTimeout: no event for 0.5 s (gave up after 2 attempts" in proc.stderr
    assert wall_s < 30  # two 0.5 s limits and a backoff, plus start-up; the drip lasts 60 s


def test_run_ends_a_stall_after_headers(hostile: HostileServer) -> None:
    proc, wall_s, _ = cli(
        "run",
        "--base-url",
        hostile.url("stall"),
        "--first-token-timeout",
        "0.5",
        "--max-retries",
        "0",
    )
    assert proc.returncode == 1
    assert "FirstTokenTimeout: no token within 0.5 s" in proc.stderr
    assert wall_s < 30


@pytest.mark.parametrize("endpoint", ["responses", "chat"])
@pytest.mark.parametrize("raw", [False, True], ids=["text", "raw"])
def test_run_never_shows_a_key_the_server_echoes(
    hostile: HostileServer, endpoint: str, raw: bool
) -> None:
    proc, _, _ = cli(
        "run",
        "--base-url",
        hostile.url("echo-key"),
        "--endpoint",
        endpoint,
        "--header",
        "X-Api-Key: sk-header-secret",
        *(["--raw"] if raw else []),
    )
    assert proc.returncode == 1
    shown = proc.stdout + proc.stderr
    assert KEY not in shown
    assert "sk-header-secret" not in shown
    assert "[redacted]" in shown


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("endless-line", "SSE event exceeds 16777216 bytes"),
        ("empty-flood", "SSE event exceeds 16777216 bytes"),
        ("huge", "the answer exceeds 67108864 characters"),
    ],
)
def test_run_memory_is_bounded_by_the_caps(
    hostile: HostileServer, behaviour: str, message: str
) -> None:
    proc, _, rss_mb = cli(
        "run", "--base-url", hostile.url(behaviour), "--endpoint", "chat", "--max-retries", "0"
    )
    assert proc.returncode == 1
    assert message in proc.stderr
    assert rss_mb <= MAX_RSS_MB, f"peak RSS {rss_mb:.0f} MB"


def _batch_input(tmp_path: Path, count: int = 4) -> Path:
    lines = [
        b'{"custom_id": "c%d", "method": "POST", "url": "/v1/%s", "body": %s}'
        % (
            i,
            b"chat/completions" if i % 2 else b"responses",
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
            if i % 2
            else b'{"model": "m", "input": "hi"}',
        )
        for i in range(count)
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize(
    ("behaviour", "limits", "kind"),
    [
        ("drip", ("--idle-timeout", "0.5"), "IdleTimeout"),
        ("stall", ("--idle-timeout", "5", "--first-token-timeout", "1"), "FirstTokenTimeout"),
    ],
)
def test_batch_ends_a_server_that_never_answers(
    hostile: HostileServer, tmp_path: Path, behaviour: str, limits: tuple[str, ...], kind: str
) -> None:
    proc, wall_s, _ = cli(
        "batch",
        str(_batch_input(tmp_path)),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--base-url",
        hostile.url(behaviour),
        *limits,
        "--max-retries",
        "1",
    )
    assert proc.returncode == 1, proc.stderr
    assert wall_s < 60
    errors = [
        orjson.loads(line) for line in (tmp_path / "out.errors.jsonl").read_bytes().splitlines()
    ]
    assert len(errors) == 4
    assert {e["error"]["code"] for e in errors} == {kind}
    assert all("(gave up after 2 attempts, " in e["error"]["message"] for e in errors)


def test_batch_never_writes_a_key_the_server_echoes(hostile: HostileServer, tmp_path: Path) -> None:
    proc, _, _ = cli(
        "batch",
        str(_batch_input(tmp_path)),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--base-url",
        hostile.url("echo-key"),
        "--max-retries",
        "0",
    )
    assert proc.returncode == 1
    written = (tmp_path / "out.errors.jsonl").read_text()
    assert len(written.splitlines()) == 4
    assert KEY not in written + proc.stdout + proc.stderr
    assert "[redacted]" in written
