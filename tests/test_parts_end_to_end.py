"""Every part of a stream through the engine and the batch runner, against the mock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from engine.batch import BatchConfig, Endpoint, run_batch
from engine.client import Engine, RetryPolicy, Timeouts

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import MockFactory

NO_RETRY = RetryPolicy(max_retries=0)
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_reasoning_stream_times_its_first_token_and_its_first_text(base_url: str) -> None:
    async with Engine(base_url=base_url, retry=NO_RETRY) as eng:
        result = await eng.run(CHAT, headers={"x-mock-reasoning-tokens": "5"})
    assert result.reasoning
    assert result.usage is not None
    assert result.usage.reasoning_tokens == 5
    assert len(result.token_times_ns) == 5 + 16  # every token-bearing chunk is timed
    assert result.first_token_ns == result.token_times_ns[0]
    assert result.first_text_ns == result.token_times_ns[5]


async def test_a_first_token_limit_counts_reasoning_and_tool_calls(
    mock_factory: MockFactory,
) -> None:
    """First reasoning token / tool call at 50 ms, first text (if any) at 550 ms: a 0.3 s
    first-token limit must not kill either stream."""
    mock = mock_factory(ttft_ms=50.0, itl_ms=50.0, output_tokens=2)
    async with Engine(
        base_url=mock.base_url, retry=NO_RETRY, timeouts=Timeouts(first_token_s=0.3)
    ) as eng:
        reasoning = await eng.run(CHAT, headers={"x-mock-reasoning-tokens": "10"})
        tools = await eng.run({**CHAT, "tools": TOOLS, "tool_choice": "required"})
    assert reasoning.text
    assert tools.tool_calls
    assert tools.finish_reason == "tool_calls"


async def test_a_batch_writes_every_part(tmp_path: Path, base_url: str) -> None:
    lines = [
        {
            "custom_id": "chat-tools",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**CHAT, "tools": TOOLS, "tool_choice": "required"},
        },
        {
            "custom_id": "responses-tools",
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                "model": "m",
                "input": "hi",
                "tools": [{"type": "function", **TOOLS[0]["function"]}],
                "tool_choice": "required",
                "reasoning": {"effort": "low"},
            },
        },
        {
            "custom_id": "chat-n",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**CHAT, "n": 2, "logprobs": True},
        },
        {
            "custom_id": "legacy",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "m", "prompt": "Once", "max_tokens": 4},
        },
    ]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    summary = await run_batch(
        BatchConfig(
            input_path=tmp_path / "in.jsonl",
            output_path=tmp_path / "out.jsonl",
            endpoints=[Endpoint(base_url)],
            retry=NO_RETRY,
        )
    )
    assert (summary.succeeded, summary.failed) == (4, 0)
    out = {
        r["custom_id"]: r["response"]["body"]
        for r in map(orjson.loads, (tmp_path / "out.jsonl").read_bytes().splitlines())
    }
    message = out["chat-tools"]["choices"][0]["message"]
    assert message["content"] is None
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["lookup"]
    assert isinstance(orjson.loads(message["tool_calls"][0]["function"]["arguments"]), dict)
    assert out["chat-tools"]["choices"][0]["finish_reason"] == "tool_calls"
    kinds = [item["type"] for item in out["responses-tools"]["output"]]
    assert kinds == ["reasoning", "function_call"]
    assert out["responses-tools"]["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    assert [c["index"] for c in out["chat-n"]["choices"]] == [0, 1]
    assert all(c["logprobs"]["content"] for c in out["chat-n"]["choices"])
    assert out["chat-n"]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0  # as sent
    assert out["legacy"]["object"] == "text_completion"
    assert out["legacy"]["choices"][0]["finish_reason"] == "length"


def test_bench_measures_legacy_completions(tmp_path: Path) -> None:
    from tests.conftest import bench_main  # noqa: PLC0415

    out = tmp_path / "r.json"
    assert (
        bench_main(
            [
                "--endpoint",
                "completions",
                "--mock-ttft-ms",
                "5",
                "--mock-itl-ms",
                "1",
                "--requests",
                "12",
                "--concurrency",
                "3",
                "--warmup",
                "0.2",
                "--output-tokens",
                "6",
                "--no-canary",
                "-q",
                "--no-save",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    doc = orjson.loads(out.read_bytes())
    assert (doc["completed"], doc["failed"]) == (12, 0)
    assert doc["output_tokens"] == 12 * 6
    assert doc["ttft_ms"]["count"] == 12
