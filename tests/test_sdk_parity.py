"""What the engine assembles equals what the official `openai` SDK's stream helpers assemble
from the same mock streams, field by field: text, tool calls, reasoning, refusal, every choice,
usage (with its details)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from openai import AsyncOpenAI

from engine.client import Engine, RetryPolicy, StreamResult

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

MESSAGES: Any = [{"role": "user", "content": "What is the weather?"}]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
}
CHAT_TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        },
    },
]
RESPONSE_TOOLS: Any = [
    {"type": "function", "strict": False, **tool["function"]} for tool in CHAT_TOOLS
]


@pytest.fixture
async def sdk(base_url: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
        yield client


async def engine_run(base_url: str, body: dict[str, Any], headers: dict[str, str]) -> StreamResult:
    async with Engine(base_url=base_url, api_key="x", retry=RetryPolicy(max_retries=0)) as eng:
        return await eng.run(body, headers=headers)


CHAT_CASES = [
    pytest.param({}, {}, id="text"),
    pytest.param(
        {"tools": CHAT_TOOLS, "tool_choice": "required"},
        {"x-mock-tool-calls": "3"},
        id="parallel-tool-calls",
    ),
    pytest.param({}, {"x-mock-reasoning-tokens": "5"}, id="reasoning_content"),
    pytest.param(
        {}, {"x-mock-reasoning-tokens": "5", "x-mock-reasoning-field": "reasoning"}, id="reasoning"
    ),
    pytest.param({}, {"x-mock-output": "refusal"}, id="refusal"),
    pytest.param({"n": 3}, {}, id="three-choices"),
    pytest.param(
        {"max_tokens": 5},
        {"x-mock-reasoning-tokens": "2", "x-mock-cached-tokens": "4"},
        id="length-cut-with-usage-details",
    ),
]


@pytest.mark.parametrize(("extra", "headers"), CHAT_CASES)
async def test_chat_equals_the_sdks_final_completion(
    base_url: str, sdk: AsyncOpenAI, extra: dict[str, Any], headers: dict[str, str]
) -> None:
    body = {"model": "m", "messages": MESSAGES, **extra}
    headers = {"x-mock-seed": "3", **headers}
    # The SDK's helper refuses a length cut; the chunks are what it would assemble from.
    async with sdk.chat.completions.stream(
        **body, stream_options={"include_usage": True}, extra_headers=headers
    ) as stream:
        async for _ in stream:
            pass
        final = stream.current_completion_snapshot
    result = await engine_run(base_url, body, headers)
    mine = result.response
    assert len(mine["choices"]) == len(final.choices)
    for ours, theirs in zip(mine["choices"], final.choices, strict=True):
        message = theirs.message
        extra_fields = message.model_extra or {}
        assert ours["index"] == theirs.index
        assert ours["finish_reason"] == theirs.finish_reason
        assert ours["message"]["content"] == message.content
        assert ours["message"]["refusal"] == message.refusal
        for name in ("reasoning_content", "reasoning"):
            assert ours["message"].get(name) == extra_fields.get(name)
        # Call ids are drawn per request: the same shape, not the same value.
        assert [
            (c["id"][:5], c["type"], c["function"]) for c in ours["message"].get("tool_calls", [])
        ] == [
            (c.id[:5], c.type, {"name": c.function.name, "arguments": c.function.arguments})
            for c in message.tool_calls or []
        ]
    assert final.usage is not None
    usage = result.usage
    assert usage is not None
    details = final.usage.completion_tokens_details
    cached = final.usage.prompt_tokens_details
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        final.usage.prompt_tokens,
        final.usage.completion_tokens,
        final.usage.total_tokens,
    )
    assert usage.reasoning_tokens == (details.reasoning_tokens or 0 if details else 0)
    assert usage.cached_tokens == (cached.cached_tokens or 0 if cached else 0)
    assert result.text == (final.choices[0].message.content or "")


RESPONSES_CASES = [
    pytest.param({}, {}, id="text"),
    pytest.param(
        {"tools": RESPONSE_TOOLS, "tool_choice": "required"},
        {"x-mock-tool-calls": "2"},
        id="function-calls",
    ),
    pytest.param(
        {"reasoning": {"effort": "low"}}, {"x-mock-reasoning-tokens": "6"}, id="reasoning-text"
    ),
    pytest.param(
        {"reasoning": {"effort": "low", "summary": "auto"}},
        {"x-mock-reasoning-tokens": "4"},
        id="reasoning-summary",
    ),
    pytest.param({}, {"x-mock-output": "refusal"}, id="refusal"),
]


@pytest.mark.parametrize(("extra", "headers"), RESPONSES_CASES)
async def test_responses_equal_the_sdks_final_response(
    base_url: str, sdk: AsyncOpenAI, extra: dict[str, Any], headers: dict[str, str]
) -> None:
    body = {"model": "m", "input": "What is the weather?", **extra}
    headers = {"x-mock-seed": "3", **headers}
    async with sdk.responses.stream(**body, extra_headers=headers) as stream:
        final = await stream.get_final_response()
    result = await engine_run(base_url, body, headers)
    choice = result.choices[0]
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.id[:5] if c.id else None, c.name, c.arguments) for c in choice.tool_calls] == [
        (c.call_id[:5], c.name, c.arguments) for c in calls
    ]
    reasoning = [item for item in final.output if item.type == "reasoning"]
    texts = [part.text for item in reasoning for part in item.content or []]
    summaries = [part.text for item in reasoning for part in item.summary]
    assert choice.reasoning == ("".join(texts) if texts else None)
    assert choice.reasoning_summary == ("".join(summaries) if summaries else None)
    refusals = [
        part.refusal
        for item in final.output
        if item.type == "message"
        for part in item.content
        if part.type == "refusal"
    ]
    assert choice.refusal == ("".join(refusals) if refusals else None)
    assert result.text == final.output_text
    assert final.usage is not None
    usage = result.usage
    assert usage is not None
    assert (
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens,
        usage.reasoning_tokens,
        usage.cached_tokens,
    ) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
        final.usage.total_tokens,
        final.usage.output_tokens_details.reasoning_tokens,
        final.usage.input_tokens_details.cached_tokens,
    )
    assert result.finish_reason == ("tool_calls" if calls else "stop")
