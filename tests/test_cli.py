"""The `stream-engine` command (and `python -m engine`) as a user runs it, against the mock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from engine.cli import main
from tests.conftest import TEST_API_KEY
from tests.test_batch import make_input, records

if TYPE_CHECKING:
    import pytest

    from engine.mock import MockServerThread

ROOT = Path(__file__).resolve().parent.parent


def engine_cli(
    *args: str, env: dict[str, str] | None = None, module: bool = True
) -> subprocess.CompletedProcess[str]:
    """`python -m engine ARGS` (or the `stream-engine` console script), bounded in time."""
    run_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        if name not in (env or {}):
            run_env.pop(name, None)
    script = shutil.which("stream-engine")
    cmd = [sys.executable, "-m", "engine"] if module or script is None else [script]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=run_env, timeout=60, check=False
    )


def test_run_prints_the_text_then_usage_and_ttft(base_url: str) -> None:
    proc = engine_cli("run", "--base-url", base_url, "Tell me a joke")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) >= 8  # the mock's 16 tokens of text, streamed to stdout
    assert "ended: completed (stop)\nusage: 10 in (0 cached), 16 out (0 reasoning), 26 total" in (
        proc.stderr
    )
    assert "time to first token:" in proc.stderr
    assert "request id: req_" in proc.stderr


def test_run_raw_prints_every_event_as_a_json_line(base_url: str) -> None:
    proc = engine_cli("run", "--raw", "--endpoint", "chat", "--base-url", base_url, "Hi")
    assert proc.returncode == 0, proc.stderr
    events = [orjson.loads(line) for line in proc.stdout.splitlines() if line]
    assert {e["type"] for e in events} == {"chat.completion.chunk"}
    assert events[-1]["data"]["usage"]["completion_tokens"] == 16  # include_usage set for us
    responses = engine_cli("run", "--raw", "--base-url", base_url, "Hi")
    types = [orjson.loads(line)["type"] for line in responses.stdout.splitlines() if line]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"


def test_console_script_without_base_url_uses_the_embedded_mock() -> None:
    proc = engine_cli("run", "--max-output-tokens", "5", "Hello", module=False)
    assert proc.returncode == 0, proc.stderr
    assert "using the built-in mock endpoint" in proc.stderr
    assert "ended: incomplete (max_output_tokens)" in proc.stderr
    assert " 5 out (0 reasoning)" in proc.stderr


def test_a_failed_stream_is_a_typed_error_and_exit_status_1(base_url: str) -> None:
    proc = engine_cli("run", "--base-url", base_url, "--header", "x-mock-fault: failed", "Hi")
    assert proc.returncode == 1
    assert "error: ResponseFailed: response failed:" in proc.stderr
    assert "request_id=req_" in proc.stderr


def test_the_api_key_is_sent_and_never_printed(auth_mock_server: MockServerThread) -> None:
    url = auth_mock_server.base_url
    ok = engine_cli("run", "--base-url", url, "Hi", env={"OPENAI_API_KEY": TEST_API_KEY})
    assert ok.returncode == 0, ok.stderr
    wrong = "sk-wrong-key-123456"
    denied = engine_cli("run", "--base-url", url, "Hi", env={"OPENAI_API_KEY": wrong})
    assert denied.returncode == 1
    assert "401" in denied.stderr
    for proc in (ok, denied):
        assert TEST_API_KEY not in proc.stdout + proc.stderr
        assert wrong not in proc.stdout + proc.stderr


def test_help_lists_the_four_verbs() -> None:
    proc = engine_cli("--help")
    assert proc.returncode == 0
    for verb in ("run", "mock", "bench", "batch"):
        assert verb in proc.stdout
    assert engine_cli().returncode == 2  # a verb is required


def test_batch_and_bench_verbs_through_the_main_parser(
    tmp_path: Path, base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_input(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "batch",
                str(tmp_path / "in.jsonl"),
                "-o",
                str(out),
                "--base-url",
                base_url,
                "--no-progress",
            ]
        )
        == 0
    )
    assert len(records(out)) == 20
    result = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--base-url",
                base_url,
                "--requests",
                "30",
                "--warmup",
                "0.2",
                "--concurrency",
                "4",
                "-q",
                "--no-save",
                "-o",
                str(result),
            ]
        )
        == 0
    )
    doc = orjson.loads(result.read_bytes())
    assert (doc["completed"], doc["failed"]) == (30, 0)
    assert "TTFT" in capsys.readouterr().err


def test_version() -> None:
    proc = engine_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("stream-engine ")


def test_a_typo_gets_the_verbs_usage_and_the_closest_flag() -> None:
    proc = engine_cli("bench", "--concurrancy", "4")
    assert proc.returncode == 2
    assert "usage: stream-engine bench" in proc.stderr
    assert "--concurrancy: did you mean --concurrency?" in proc.stderr
    batch = engine_cli("batch", "in.jsonl", "-o", "out.jsonl", "--retrys", "2")
    assert "usage: stream-engine batch" in batch.stderr
    assert "did you mean --max-retries?" in batch.stderr


def test_every_run_option_says_what_it_does() -> None:
    text = engine_cli("run", "--help").stdout
    for flag in ("--model", "--base-url", "--api-key", "--endpoint", "--max-output-tokens"):
        line = next(line for line in text.splitlines() if line.strip().startswith(flag))
        block = text[text.index(line) :].split("\n  -", 1)[0]
        assert len(block.split()) > 3, f"{flag} has no help"
