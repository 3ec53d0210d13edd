"""`stream-engine mock` as a user runs it: a child process, its ready line, HTTP, SIGTERM.

Bounded everywhere: the ready line is awaited with select() against a deadline, and the child
gets SIGTERM and a bounded wait (then SIGKILL) whatever the test's outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import orjson
import pytest

from engine.cli.mock import READY_LINE, add_arguments, config_from_args
from engine.cli.mock import main as mock_main
from engine.mock.config import MockConfig, parse_fault_rates
from engine.mock.faults import FaultPicker

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
READY_PREFIX = READY_LINE.split("{", 1)[0]
KEY = "sk-cli-secret"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
REQUESTS = 40


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MOCK_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def wait_ready(proc: subprocess.Popen[bytes]) -> str:
    """The base URL from the child's ready line (it chose the port: --port 0)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline().decode()
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :].strip()
        if not line:
            break
    raise AssertionError(f"no ready line (exit status {proc.poll()})")


@contextlib.contextmanager
def mock_command(*flags: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m engine mock --port 0 FLAGS…`; always stopped (SIGTERM, then SIGKILL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "mock", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        cwd=ROOT,
    )
    try:
        yield proc, wait_ready(proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


async def exercise(base_url: str) -> dict[str, object]:
    """Streams REQUESTS answers with the key, and checks what is refused without it."""
    body = orjson.dumps({"model": "m", "input": "hello", "stream": True})
    auth = {"Authorization": f"Bearer {KEY}"}
    root = base_url.removesuffix("/v1")
    seen: dict[str, object] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for method, url in (
            ("GET", base_url + "/models"),
            ("POST", base_url + "/responses"),
            ("GET", root + "/mock/stats"),
        ):
            async with session.request(method, url, data=body) as resp:
                assert resp.status == 401, url
        statuses, event_counts = [], []
        for _ in range(REQUESTS):
            async with session.post(base_url + "/responses", data=body, headers=auth) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert resp.headers["Retry-After"] == "0.25"
                    await resp.read()
                    continue
                raw = b""
                async for chunk in resp.content.iter_any():  # streamed, as it arrives
                    raw += chunk
                event_counts.append(raw.count(b"\n\n"))
                assert raw.rstrip().endswith(b"}")
                assert b"event: response.completed\n" in raw
        seen["statuses"], seen["event_counts"] = statuses, event_counts
        async with session.get(root + "/mock/stats", headers=auth) as resp:
            seen["stats"] = await resp.json()
    return seen


def test_mock_command_serves_with_faults_and_api_key() -> None:
    with mock_command(
        "--ttft-ms",
        "0",
        "--itl-ms",
        "0",
        "--output-tokens",
        "5",
        "--faults",
        "429=0.4",
        "--seed",
        "3",
        "--retry-after",
        "0.25",
        "--api-key",
        KEY,
    ) as (proc, base_url):
        assert base_url.startswith("http://127.0.0.1:")
        assert not base_url.endswith(":0/v1")
        seen = asyncio.run(exercise(base_url))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_TIMEOUT_S) == 0  # a clean stop on SIGTERM
        assert proc.stderr is not None
        assert KEY.encode() not in proc.stderr.read()
    # --faults and --seed took effect: exactly the draws of a picker with the same rates and seed.
    picker = FaultPicker({"429": 0.4}, seed=3)
    expected = [429 if picker.pick(None).status == 429 else 200 for _ in range(REQUESTS)]
    assert seen["statuses"] == expected
    assert 0 < expected.count(429) < REQUESTS
    assert seen["event_counts"] == [4 + 5 + 4] * expected.count(200)  # --output-tokens 5
    stats = seen["stats"]
    assert isinstance(stats, dict)
    assert stats["faults"] == {"429": expected.count(429)}
    assert stats["requests"] == {"/v1/responses": REQUESTS}
    assert stats["unauthorized"] == 3


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ("429=abc", "fault rate '429=abc' is not a number"),
        ("429", "fault rate '429' is not KIND=RATE"),
        ("teapot=0.1", "unknown fault kind 'teapot'"),
        ("429=1.5", "fault rate for '429' must be in [0, 1]"),
        ("429=0.6,500=0.6", "fault rates add up to more than 1"),
        ("stall:x=0.1", "only disconnect/stall take ':N'"),
    ],
)
def test_invalid_faults_exit_2_with_a_clear_message(
    faults: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mock_main(["--port", "0", "--faults", faults]) == 2  # before anything is bound
    err = capsys.readouterr().err
    assert err.startswith("stream-engine mock: ")
    assert message in err


def test_invalid_faults_exit_status_through_the_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "mock", "--port", "0", "--faults", "disconnect=lots"],
        capture_output=True,
        env=child_env(),
        cwd=ROOT,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""  # never got as far as listening
    assert b"fault rate 'disconnect=lots' is not a number" in proc.stderr


def test_parse_fault_rates() -> None:
    assert parse_fault_rates("") == {}
    assert parse_fault_rates(" 429=0.05, 500=0.02 ,disconnect:3=0.01,") == {
        "429": 0.05,
        "500": 0.02,
        "disconnect:3": 0.01,
    }


@pytest.mark.parametrize(
    "config",
    [
        MockConfig(),
        MockConfig(
            ttft_ms=12.5,
            itl_ms=3.0,
            jitter=0.2,
            itl_distribution="lognormal",
            output_tokens=4,
            output_tokens_max=9,
            max_concurrency=3,
            faults={"429": 0.1, "disconnect:3": 0.05},
            seed=7,
            retry_after_s=0.5,
            limit_ending="vllm",
            model="m2",
            close_after_response="silent",
            keepalive_timeout_s=0.2,
            reasoning_tokens=12,
            reasoning_field="reasoning",
            reasoning_summary=True,
        ),
        MockConfig(limit_ending="completed", close_after_response="announced"),
        MockConfig(reasoning_tokens=3),
    ],
    ids=["defaults", "every-field", "completed-announced", "reasoning-raw-text"],
)
def test_to_argv_round_trips(config: MockConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOCK_API_KEY", raising=False)  # the key never travels in argv
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(config.to_argv())) == config


def test_cli_defaults_of_the_new_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOCK_API_KEY", raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args([]))
    assert (config.limit_ending, config.close_after_response, config.keepalive_timeout_s) == (
        "incomplete",
        "no",
        None,
    )
    assert (config.reasoning_tokens, config.reasoning_field, config.reasoning_summary) == (
        0,
        "reasoning_content",
        False,
    )


def test_bad_keepalive_timeout_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert mock_main(["--port", "0", "--keepalive-timeout", "0"]) == 2
    assert "keepalive_timeout_s must be > 0" in capsys.readouterr().err


def test_bad_reasoning_tokens_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert mock_main(["--port", "0", "--reasoning-tokens", "-1"]) == 2
    assert "reasoning_tokens must be >= 0" in capsys.readouterr().err


async def ending_and_connection(base_url: str) -> dict[str, object]:
    """A limited stream's last event and status and its Connection header, then whether the
    server closed that connection, and an idle one (the keep-alive timeout)."""
    host, port = base_url.removeprefix("http://").removesuffix("/v1").split(":")
    seen: dict[str, object] = {}
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            seen["idle_eof"] = await reader.read() == b""  # read() returns at EOF only
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection(host, int(port))
        body = orjson.dumps({"model": "m", "input": "hi", "stream": True, "max_output_tokens": 2})
        writer.write(
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            raw = bytearray()
            while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                raw += (await reader.readexactly(size + 2))[:-2]
            await reader.readexactly(2)
            seen["eof_after_response"] = await reader.read() == b""
        finally:
            writer.close()
    seen["connection"] = [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"connection:")
    ]
    events = [block.split(b"\n") for block in bytes(raw).split(b"\n\n") if block]
    seen["names"] = [lines[0].removeprefix(b"event: ").decode() for lines in events]
    seen["status"] = orjson.loads(events[-1][1].removeprefix(b"data: "))["response"]["status"]
    return seen


def test_mock_command_limit_ending_and_connection_flags() -> None:
    with mock_command(
        "--ttft-ms",
        "0",
        "--itl-ms",
        "0",
        "--limit-ending",
        "vllm",
        "--close-after-response",
        "announced",
        "--keepalive-timeout",
        "0.2",
    ) as (_, base_url):
        seen = asyncio.run(ending_and_connection(base_url))
    assert seen["idle_eof"] is True
    names = seen["names"]
    assert isinstance(names, list)
    assert names[-1] == "response.completed"  # vllm: completed, whose status is incomplete
    assert seen["status"] == "incomplete"
    assert names.count("response.output_text.delta") == 2
    assert seen["connection"] == [b"close"]
    assert seen["eof_after_response"] is True
