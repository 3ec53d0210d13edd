"""bench's face (issue 25): every flag says what it does and its default, one latency model
for the embedded and the standalone mock, --max-retries as on run and batch, the length
asked for and said in words, and the README's main job printing nothing misleading."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli import build_parser
from engine.cli.bench import config_from_args
from engine.loadtest.config import LoadConfig, asks_length
from engine.loadtest.workload import Workload
from engine.mock.config import SERVED_ITL_MS, SERVED_OUTPUT_TOKENS, SERVED_TTFT_MS
from engine.report.text import requests_text

ROOT = Path(__file__).resolve().parent.parent
EMPTY = (None, False, "", [], {}, 0)  # defaults that need no saying: off, none, nothing


def verb(name: str) -> argparse.ArgumentParser:
    """The `stream-engine NAME` parser, as the command line builds it."""
    parser = build_parser()
    actions = parser._actions
    verbs = next(a for a in actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = verbs.choices[name]
    return chosen


def shown_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"
    ]


@pytest.mark.parametrize("name", ["bench", "mock"])
def test_every_option_says_what_it_does_and_its_default(name: str) -> None:
    """`--endpoint`, `--max-connections`, `--seed`, `--mock-ttft-ms` and `--mock-itl-ms` had
    no help; `--input-tokens` and `--output-tokens` hid 128 and 64."""
    parser = verb(name)
    for action in shown_options(parser):
        flag = action.option_strings[-1]
        assert action.help, f"{flag} has no help"
        if action.default not in EMPTY:
            assert "default" in action.help, f"{flag} hides its default {action.default!r}"
    text = " ".join(parser.format_help().split())
    if name == "bench":
        for said in (
            "--input-tokens SPEC each prompt's length in tokens",
            "(default 64)",
            "--mock-ttft-ms MOCK_TTFT_MS the mock's time to first token, ms (default 200)",
            "--mock-itl-ms MOCK_ITL_MS the mock's inter-token latency, ms (default 20)",
            "(default responses)",
            "--max-retries N",
        ):
            assert said in text
        assert "--retries" not in text  # the old name works, unshown


def test_the_embedded_and_the_standalone_mock_share_one_latency_model() -> None:
    """The embedded mock was 100/10 ms, `stream-engine mock` 200/20 ms."""
    bench = verb("bench").parse_args([])
    mock = verb("mock").parse_args([])
    assert (bench.mock_ttft_ms, bench.mock_itl_ms) == (mock.ttft_ms, mock.itl_ms)
    assert (mock.ttft_ms, mock.itl_ms) == (SERVED_TTFT_MS, SERVED_ITL_MS) == (200.0, 20.0)
    assert mock.output_tokens == str(SERVED_OUTPUT_TOKENS)


def test_retries_are_max_retries_as_on_run_and_batch() -> None:
    bench = verb("bench")
    assert bench.parse_args([]).max_retries == 0  # a load test counts failures
    assert bench.parse_args(["--max-retries", "3"]).max_retries == 3
    assert bench.parse_args(["--retries", "2"]).max_retries == 2  # the old name, kept
    assert config_from_args(bench.parse_args(["--retries", "2"]), "http://x/v1").retries == 2
    for other in ("run", "batch"):
        assert "--max-retries" in verb(other).format_help()


@pytest.mark.parametrize(
    ("url", "asked"),
    [
        ("http://127.0.0.1:8000/v1", True),  # vLLM, SGLang, the mock: they honour it
        ("http://gpu-box:8080/v1", True),  # llama-server ignores what it does not know
        ("https://api.openai.com/v1", False),  # refuses unknown fields
        ("https://my-resource.openai.azure.com/openai/v1", False),
    ],
)
def test_bench_asks_for_its_length_except_where_unknown_fields_are_refused(
    url: str, asked: bool
) -> None:
    config = LoadConfig(url, endpoint="chat", output_tokens=64)
    assert asks_length(url) is asked
    assert config.ignore_eos is asked
    body = Workload(config).body(0)
    assert body["max_completion_tokens"] == 64
    assert (body.get("ignore_eos"), body.get("min_tokens")) == (
        (True, 64) if asked else (None, None)
    )
    assert config.asked_tokens == (64 if asked else None)
    off = Workload(LoadConfig(url, ignore_eos=False, output_tokens=64)).body(0)
    assert "ignore_eos" not in off
    assert "min_tokens" not in off
    args = verb("bench").parse_args(["--no-ignore-eos"])
    assert config_from_args(args, url).ignore_eos is False
    assert config_from_args(verb("bench").parse_args([]), url).ignore_eos is asked


def doc_with(ends: dict[str, int], asked: dict[str, Any] | None, failed: int = 0) -> dict[str, Any]:
    return {
        "completed": sum(ends.values()),
        "failed": failed,
        "end_reasons": ends,
        "requested_length": asked,
    }


@pytest.mark.parametrize(
    ("ends", "asked", "said"),
    [
        pytest.param(
            {"length": 217},
            {"tokens": 64, "reached": 217, "short": {}},
            "217 completed: 217 at the requested length (64 tokens); 0 failed",
            id="the-readme-job",
        ),
        pytest.param(
            {"length": 200, "stop": 17},
            {"tokens": 64, "reached": 200, "short": {"stop": 17}},
            "217 completed: 200 at the requested length (64 tokens), 17 stopped by the model "
            "short of it (stop); 0 failed",
            id="a-server-that-ignores-ignore_eos",
        ),
        pytest.param(
            {"stop": 150, "length": 67},
            None,
            "217 completed: 150 ended by the model (stop), 67 cut at the output cap (length); "
            "0 failed",
            id="openai-the-cap-alone",
        ),
        pytest.param({}, None, "0 completed, 3 failed", id="nothing-completed"),
    ],
)
def test_end_reasons_are_words_that_say_what_happened(
    ends: dict[str, int], asked: dict[str, Any] | None, said: str
) -> None:
    """`217 completed (217 incomplete)` read as 217 cancelled requests to GuideLLM's users."""
    assert requests_text(doc_with(ends, asked, failed=3 if not ends else 0)) == said


@pytest.mark.timeout(120)
def test_the_readme_main_job_says_nothing_misleading(tmp_path: Path) -> None:
    """`stream-engine bench` as the README runs it (shorter): the mock's model, every request
    at the length it asked for, the live lines a log gets, and a verdict that matches the
    client's own figures."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "bench", "--duration", "3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())
    assert "TTFT 200 ms, ITL 20 ms, answers of 128 tokens" in err
    # the live display's plain lines, in order (stderr is not a terminal here)
    phases = re.findall(r"bench: (starting the mock endpoint|opening connections|warm-up|"
                        r"measuring|draining|done)", err)  # fmt: skip
    assert phases[0] == "starting the mock endpoint"
    assert phases[-1] == "done"
    assert "warm-up" in phases
    done = re.search(r"(\d+) completed: (\d+) at the requested length \(64 tokens\); 0 failed", err)
    assert done is not None, err[-2000:]
    assert done[1] == done[2]
    assert "incomplete" not in err
    folder = next((tmp_path / "stream-engine-runs").iterdir())
    doc = orjson.loads((folder / "result.json").read_bytes())
    assert doc["requested_length"] == {"tokens": 64, "reached": doc["completed"], "short": {}}
    client = doc["client"]
    assert client["verdict"].split(":")[0] in err
    if client["state"] == "client-bound":  # only ever with the client's own figures to show
        assert client["max_cpu_percent"] >= 25
    page = (folder / "report.html").read_text()
    assert f"{doc['completed']} completed / 0 failed" in page
    assert " ok /" not in page
