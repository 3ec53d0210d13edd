"""Against live real servers: `run`, `bench` and `batch` for both wire formats.

They run when `STREAM_ENGINE_REAL_SERVERS` names servers (`name=base_url`, comma-separated;
`bash tests/real_servers/setup.sh all` starts llama-server on :8080, and vLLM on :8000 with
`RS_WITH_VLLM=1`) and are skipped, with that reason, otherwise:

    STREAM_ENGINE_REAL_SERVERS=llama-server=http://127.0.0.1:8080/v1,vllm=http://127.0.0.1:8000/v1 \
        pytest -m real_server

The reasoning tests run when `STREAM_ENGINE_REAL_REASONING_SERVER` is the base URL of the
llama-server that `bash tests/real_servers/setup.sh start-reasoning` starts (:8081):

    STREAM_ENGINE_REAL_REASONING_SERVER=http://127.0.0.1:8081/v1 pytest -m real_server

Every other test talks to the mock or to recordings of these servers (test_real_streams.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from engine.client import Engine, RetryPolicy
from tests.real_servers.record import reasoning_requests

if TYPE_CHECKING:
    from pathlib import Path

MODEL = os.environ.get("STREAM_ENGINE_REAL_MODEL", "tiny-random-llama")
SERVERS = dict(
    item.split("=", 1)
    for item in os.environ.get("STREAM_ENGINE_REAL_SERVERS", "").split(",")
    if "=" in item
)
REASONING_SERVER = os.environ.get("STREAM_ENGINE_REAL_REASONING_SERVER", "")
ENDPOINTS = ("responses", "chat")
PROMPT = "Write a short story about a lighthouse."

pytestmark = pytest.mark.real_server
live = pytest.mark.skipif(
    not SERVERS,
    reason="no live server: set STREAM_ENGINE_REAL_SERVERS "
    "(bash tests/real_servers/setup.sh all starts them)",
)
CASES = [
    pytest.param(url, ep, id=f"{name}-{ep}") for name, url in SERVERS.items() for ep in ENDPOINTS
] or [pytest.param("", ep, id=f"none-{ep}") for ep in ENDPOINTS]


def body(endpoint: str, tokens: int, prompt: str = PROMPT) -> dict[str, Any]:
    if endpoint == "chat":
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "temperature": 0,
        }
    return {"model": MODEL, "input": prompt, "max_output_tokens": tokens, "temperature": 0}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@live
@pytest.mark.parametrize(("url", "endpoint"), CASES)
def test_run_exits_0_and_says_how_it_ended(url: str, endpoint: str) -> None:
    proc = cli(
        "run",
        "--base-url",
        url,
        "--endpoint",
        endpoint,
        "--model",
        MODEL,
        "--max-output-tokens",
        "16",
        PROMPT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "ended: " in proc.stderr


@live
@pytest.mark.parametrize(("url", "endpoint"), CASES)
def test_bench_8_streams_has_no_failure(url: str, endpoint: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = cli(
        "bench",
        "--no-save",
        "--base-url",
        url,
        "--endpoint",
        endpoint,
        "--model",
        MODEL,
        "--output-tokens",
        "64",
        "--concurrency",
        "8",
        "--duration",
        "5",
        "--workers",
        "1",
        "--quiet",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(out.read_bytes())
    assert doc["failed"] == 0, doc["errors"]
    assert doc["completed"] > 0


@live
@pytest.mark.parametrize(("url", "endpoint"), CASES)
def test_a_mixed_workload_of_conversations_runs_without_failure(
    url: str, endpoint: str, tmp_path: Path
) -> None:
    """Length distributions, a shared system prompt and 3-turn conversations: each later
    turn carries the answers (llama-server refuses an untyped assistant item on Responses)."""
    out = tmp_path / "workload.json"
    proc = cli(
        *("bench", "--no-save", "--quiet", "--workers", "1", "-o", str(out)),
        *("--base-url", url, "--endpoint", endpoint, "--model", MODEL),
        *("--input-tokens", "mean=60,stdev=20,min=10", "--output-tokens", "8-24"),
        *("--shared-prefix-tokens", "100", "--turns", "3", "--concurrency", "3"),
        *("--requests", "18", "--warmup", "0"),
    )
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(out.read_bytes())
    assert doc["failed"] == 0, doc["errors"]
    turns = doc["turns"]
    assert [row["turn"] for row in turns] == [0, 1, 2]
    inputs = [row["input_tokens_mean"] for row in turns]
    assert inputs == sorted(inputs)
    assert inputs[0] < inputs[-1]  # the context grew turn by turn
    assert doc["lengths"]["output"]["asked"]["min"] >= 8


@live
def test_a_mixed_batch_lands_whole(tmp_path: Path) -> None:
    for name, url in SERVERS.items():
        lines = [
            orjson.dumps(
                {
                    "custom_id": f"{name}-{i}",
                    "method": "POST",
                    "url": "/v1/" + ("chat/completions" if i % 2 else "responses"),
                    "body": body(ENDPOINTS[i % 2], 8 + i % 3, f"{PROMPT} {i}"),
                }
            )
            for i in range(40)
        ]
        (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        out = tmp_path / f"{name}.jsonl"
        proc = cli("batch", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url)
        assert proc.returncode == 0, proc.stderr
        records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert len(records) == 40
        assert (tmp_path / f"{name}.errors.jsonl").read_bytes() == b""
        for rec in records:
            assert rec["response"]["status_code"] == 200
            usage = rec["response"]["body"]["usage"]
            assert (
                usage[
                    "completion_tokens" if "choices" in rec["response"]["body"] else "output_tokens"
                ]
                > 0
            )


@live
@pytest.mark.parametrize(("url", "endpoint"), CASES)
async def test_streamed_usage_and_text_equal_the_servers_whole_answer(
    url: str, endpoint: str
) -> None:
    """Greedy decoding: the streamed answer and the non-streamed one are the same answer."""
    request = body(endpoint, 16)
    path = "/chat/completions" if endpoint == "chat" else "/responses"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, json={**request, "stream": False}) as resp,
    ):
        whole = await resp.json()
    async with Engine(base_url=url, retry=RetryPolicy(max_retries=0)) as eng:
        result = await eng.run(request, endpoint=endpoint)
    assert result.usage is not None
    if endpoint == "chat":
        text = whole["choices"][0]["message"]["content"]
        assert (result.usage.input_tokens, result.usage.output_tokens) == (
            whole["usage"]["prompt_tokens"],
            whole["usage"]["completion_tokens"],
        )
        assert result.finish_reason == whole["choices"][0]["finish_reason"]
    else:
        text = "".join(
            part["text"]
            for item in whole["output"]
            if item["type"] == "message"
            for part in item["content"]
            if part["type"] == "output_text"
        )
        assert (result.usage.input_tokens, result.usage.output_tokens) == (
            whole["usage"]["input_tokens"],
            whole["usage"]["output_tokens"],
        )
        assert result.status == whole["status"]
    assert result.text == text


@pytest.mark.skipif(
    not REASONING_SERVER,
    reason="no live reasoning server: set STREAM_ENGINE_REAL_REASONING_SERVER "
    "(bash tests/real_servers/setup.sh start-reasoning starts it on :8081)",
)
@pytest.mark.parametrize("name", ["chat-reasoning", "responses-reasoning"])
async def test_a_streamed_reasoning_answer_equals_the_servers_whole_answer(name: str) -> None:
    """The recorded requests (a grammar closes the thinking), greedy: the streamed reasoning
    and text are the non-streamed answer's, and the reasoning came first."""
    path, request = reasoning_requests(MODEL)[name]
    whole_request = {k: v for k, v in request.items() if k != "stream_options"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(REASONING_SERVER + path, json={**whole_request, "stream": False}) as resp,
    ):
        whole = await resp.json()
    async with Engine(base_url=REASONING_SERVER, retry=RetryPolicy(max_retries=0)) as eng:
        result = await eng.run(
            request, endpoint="chat" if name == "chat-reasoning" else "responses"
        )
    if name == "chat-reasoning":
        message = whole["choices"][0]["message"]
        reasoning, text = message["reasoning_content"], message["content"]
    else:
        parts = [
            (item["type"], part["text"])
            for item in whole["output"]
            for part in item.get("content") or []
        ]
        reasoning = "".join(t for kind, t in parts if kind == "reasoning")
        text = "".join(t for kind, t in parts if kind == "message")
    assert reasoning
    assert text
    assert (result.reasoning, result.text) == (reasoning, text)
    assert result.ttft_s is not None
    assert result.ttft_text_s is not None
    assert result.ttft_s < result.ttft_text_s
