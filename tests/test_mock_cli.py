"""`stream-engine mock` as a user runs it: a child process, its ready line, HTTP, SIGTERM.

Bounded everywhere: the ready line is awaited with select() against a deadline, and the child
gets SIGTERM and a bounded wait (then SIGKILL) whatever the test's outcome.
"""

from __future__ import annotations

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

from engine.mock.command import READY_LINE
from engine.mock.command import main as mock_main
from engine.mock.config import parse_fault_rates
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
            return line[len(READY_PREFIX):].strip()
        if not line:
            break
    raise AssertionError(f"no ready line (exit status {proc.poll()})")


@contextlib.contextmanager
def mock_command(*flags: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m engine mock --port 0 FLAGS…`; always stopped (SIGTERM, then SIGKILL)."""
    proc = subprocess.Popen([sys.executable, "-m", "engine", "mock", "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
                            cwd=ROOT)
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
        for method, url in (("GET", base_url + "/models"), ("POST", base_url + "/responses"),
                            ("GET", root + "/mock/stats")):
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
    with mock_command("--ttft-ms", "0", "--itl-ms", "0", "--output-tokens", "5",
                      "--faults", "429=0.4", "--seed", "3", "--retry-after", "0.25",
                      "--api-key", KEY) as (proc, base_url):
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


@pytest.mark.parametrize(("faults", "message"), [
    ("429=abc", "fault rate '429=abc' is not a number"),
    ("429", "fault rate '429' is not KIND=RATE"),
    ("teapot=0.1", "unknown fault kind 'teapot'"),
    ("429=1.5", "fault rate for '429' must be in [0, 1]"),
    ("429=0.6,500=0.6", "fault rates add up to more than 1"),
    ("stall:x=0.1", "only disconnect/stall take ':N'"),
])
def test_invalid_faults_exit_2_with_a_clear_message(faults: str, message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert mock_main(["--port", "0", "--faults", faults]) == 2  # before anything is bound
    err = capsys.readouterr().err
    assert err.startswith("stream-engine mock: ")
    assert message in err


def test_invalid_faults_exit_status_through_the_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "engine", "mock", "--port", "0", "--faults",
                           "disconnect=lots"], capture_output=True, env=child_env(), cwd=ROOT,
                          timeout=START_TIMEOUT_S, check=False)
    assert proc.returncode == 2
    assert proc.stdout == b""  # never got as far as listening
    assert b"fault rate 'disconnect=lots' is not a number" in proc.stderr


def test_parse_fault_rates() -> None:
    assert parse_fault_rates("") == {}
    assert parse_fault_rates(" 429=0.05, 500=0.02 ,disconnect:3=0.01,") == {
        "429": 0.05, "500": 0.02, "disconnect:3": 0.01}
