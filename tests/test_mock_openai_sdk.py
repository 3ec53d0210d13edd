"""The official openai SDK parses everything the mock streams: the faithfulness check.

Every part (tool calls, reasoning, refusal, several choices, logprobs, legacy Completions) goes
through the SDK's own stream helpers, which rebuild the final object from the events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import openai
import orjson
import pytest
from openai import AsyncOpenAI, AsyncStream

from engine.mock.parts import REFUSAL

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from engine.mock import MockServerThread
    from tests.conftest import MockFactory

MESSAGES = [{"role": "user", "content": "Say something"}]


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


async def test_responses_create_stream(client: AsyncOpenAI) -> None:
    stream = await client.responses.create(model="mock-model", input="hello", stream=True)
    types, text = [], []
    async with stream:
        async for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                text.append(event.delta)
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert event.type == "response.completed"
    assert event.response.output_text == "".join(text)
    assert event.response.usage is not None
    assert event.response.usage.output_tokens == len(text) == 16


@pytest.mark.parametrize(("ending", "status"), [("vllm", "incomplete"), ("completed", "completed")])
async def test_responses_stream_helper_final_response(
    mock_factory: MockFactory, ending: str, status: str
) -> None:
    """get_final_response() needs a response.completed event: the endings that send one."""
    server = mock_factory(limit_ending=ending)
    async with (
        AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk,
        sdk.responses.stream(model="mock-model", input="hello", max_output_tokens=7) as stream,
    ):
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.status == status
    assert final.output_text == "".join(deltas)
    assert final.usage is not None
    assert final.usage.output_tokens == 7
    assert final.usage.total_tokens == final.usage.input_tokens + 7


async def test_responses_stream_helper_reads_the_incomplete_ending(client: AsyncOpenAI) -> None:
    """The default limit ending, OpenAI's response.incomplete, parses as the SDK's event."""
    async with client.responses.stream(
        model="mock-model", input="hello", max_output_tokens=7
    ) as stream:
        events = [event async for event in stream]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert last.response.output_text == "".join(deltas)
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == len(deltas) == 7


async def test_responses_non_streaming(client: AsyncOpenAI) -> None:
    response = await client.responses.create(model="mock-model", input="hello")
    assert response.usage is not None
    assert response.usage.output_tokens == 16
    assert response.output_text


async def test_chat_create_stream_with_usage(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="mock-model",
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    text, finish, usage = [], None, None
    async with stream:
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == 16
    assert len([t for t in text if t]) == 16


async def test_chat_stream_helper(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="mock-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.completion_tokens == 16
    assert final.choices[0].message.content


async def test_chat_stream_helper_reports_the_length_cut(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="mock-model",
        messages=MESSAGES,
        max_tokens=5,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    ) as stream:
        async for _ in stream:
            pass
        with pytest.raises(openai.LengthFinishReasonError) as info:
            await stream.get_final_completion()
    assert info.value.completion.usage is not None
    assert info.value.completion.usage.completion_tokens == 5


async def drain(stream: AsyncStream[Any]) -> None:
    async with stream:
        async for _ in stream:
            pass


async def test_sdk_sees_rate_limits_and_auth(
    client: AsyncOpenAI, auth_mock_server: MockServerThread
) -> None:
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="m", input="x", extra_headers={"x-mock-fault": "429"})
    async with AsyncOpenAI(
        base_url=auth_mock_server.base_url, api_key="wrong", max_retries=0
    ) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.responses.create(model="m", input="x")


async def test_sdk_raises_on_stream_errors(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
        extra_headers={"x-mock-fault": "error-event"},
    )
    with pytest.raises(openai.APIError):
        await drain(stream)


@pytest.mark.parametrize("fault", ["crlf", "comments", "done-after", "crlf,comments", "bom"])
async def test_sdk_reads_framing_variants(client: AsyncOpenAI, fault: str) -> None:
    stream = await client.responses.create(
        model="m", input="x", stream=True, extra_headers={"x-mock-fault": fault}
    )
    async with stream:
        types = [event.type async for event in stream]
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 16


# --- Every part of a stream, read by the SDK's own stream helpers -----------------------------

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"tz": {"type": "string"}}}
CHAT_TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": "get_weather", "strict": True, "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
RESPONSE_TOOLS: Any = [
    {"type": "function", "strict": False, **tool["function"]} for tool in CHAT_TOOLS
]


async def test_chat_stream_helper_assembles_parallel_tool_calls(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="m",
        messages=MESSAGES,
        tools=CHAT_TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        stream_options={"include_usage": True},
        extra_headers={"x-mock-tool-calls": "3"},
    ) as stream:
        done_events = [
            event async for event in stream if event.type == "tool_calls.function.arguments.done"
        ]
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather", "get_time", "get_weather"]
    assert all(call.id.startswith("call_") and call.type == "function" for call in calls)
    assert len({call.id for call in calls}) == 3
    assert [e.arguments for e in done_events] == [call.function.arguments for call in calls]
    for call in calls:
        assert isinstance(orjson.loads(call.function.arguments), dict)
    # The strict tool's arguments are parsed by the SDK, as it does for OpenAI's.
    assert calls[0].function.parsed_arguments == orjson.loads(calls[0].function.arguments)
    assert final.usage is not None
    assert final.usage.completion_tokens > 3


async def test_chat_stream_helper_refusal_reasoning_and_logprobs(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="m",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-mock-output": "refusal"},
    ) as stream:
        refused = await stream.get_final_completion()
    assert refused.choices[0].message.refusal == "".join(REFUSAL)
    assert refused.choices[0].message.content is None
    async with client.chat.completions.stream(
        model="m",
        messages=MESSAGES,
        logprobs=True,
        top_logprobs=2,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
        extra_headers={"x-mock-reasoning-tokens": "4"},
    ) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.message.content
    assert isinstance((choice.message.model_extra or {}).get("reasoning_content"), str)
    assert choice.logprobs is not None
    assert choice.logprobs.content is not None
    assert "".join(lp.token for lp in choice.logprobs.content) == choice.message.content
    assert all(len(lp.top_logprobs) == 2 for lp in choice.logprobs.content)
    assert final.usage is not None
    details = final.usage.completion_tokens_details
    assert details is not None
    assert details.reasoning_tokens == 4
    assert final.usage.completion_tokens == 4 + 16


async def test_chat_stream_helper_keeps_every_choice(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="m",
        messages=MESSAGES,
        n=3,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    ) as stream:
        final = await stream.get_final_completion()
    assert [c.index for c in final.choices] == [0, 1, 2]
    assert all(c.finish_reason == "stop" and c.message.content for c in final.choices)
    assert len({c.message.content for c in final.choices}) == 3
    assert final.usage is not None
    assert final.usage.completion_tokens == 3 * 16


async def test_responses_stream_helper_function_calls_and_reasoning(client: AsyncOpenAI) -> None:
    async with client.responses.stream(
        model="m",
        input="hello",
        tools=RESPONSE_TOOLS,
        tool_choice="required",
        reasoning={"effort": "low"},
        extra_headers={"x-mock-tool-calls": "2"},
    ) as stream:
        deltas = [e async for e in stream if e.type == "response.function_call_arguments.delta"]
        final = await stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "function_call", "function_call"]
    reasoning, *calls = final.output
    assert reasoning.type == "reasoning"
    assert reasoning.content is not None
    assert reasoning.content[0].text
    names, arguments = [], []
    for call in calls:
        assert call.type == "function_call"
        assert call.status == "completed"
        assert call.call_id.startswith("call_")
        assert isinstance(orjson.loads(call.arguments), dict)
        names.append(call.name)
        arguments.append(call.arguments)
    assert names == ["get_weather", "get_time"]
    assert deltas[-1].snapshot == arguments[-1]  # the SDK's own accumulation agrees
    assert final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens == 8


@pytest.mark.parametrize("headers", [{"x-mock-output": "refusal"}, {}], ids=["refusal", "text"])
async def test_responses_stream_helper_summary_refusal_logprobs(
    client: AsyncOpenAI, headers: dict[str, str]
) -> None:
    async with client.responses.stream(
        model="m",
        input="hello",
        reasoning={"effort": "low", "summary": "auto"},
        include=["message.output_text.logprobs"],
        top_logprobs=1,
        extra_headers={"x-mock-reasoning-tokens": "3", **headers},
    ) as stream:
        types = [event.type async for event in stream]
        final = await stream.get_final_response()
    reasoning, message = final.output
    assert reasoning.type == "reasoning"
    assert [s.type for s in reasoning.summary] == ["summary_text"]
    assert types.count("response.reasoning_summary_text.delta") == 3
    assert message.type == "message"
    part = message.content[0]
    if headers:
        assert part.type == "refusal"
        assert part.refusal == "".join(REFUSAL)
    else:
        assert part.type == "output_text"
        assert part.logprobs is not None
        assert "".join(lp.token for lp in part.logprobs) == final.output_text


async def test_legacy_completions(client: AsyncOpenAI) -> None:
    stream = await client.completions.create(
        model="m", prompt="hello", max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    texts, finish, usage = [], None, None
    async with stream:
        async for chunk in stream:
            assert chunk.object == "text_completion"
            for choice in chunk.choices:
                texts.append(choice.text)
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
    assert finish == "length"
    assert len([t for t in texts if t]) == 5
    assert usage is not None
    assert usage.completion_tokens == 5
    whole = await client.completions.create(model="m", prompt=["a", "b c"], max_tokens=3)
    assert [c.index for c in whole.choices] == [0, 1]
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 6
