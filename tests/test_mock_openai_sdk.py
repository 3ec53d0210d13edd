"""The official openai SDK parses everything the mock streams: the faithfulness check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import openai
import pytest
from openai import AsyncOpenAI, AsyncStream

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


@pytest.mark.parametrize(("ending", "status"), [("vllm", "incomplete"),
                                                ("completed", "completed")])
async def test_responses_stream_helper_final_response(mock_factory: MockFactory, ending: str,
                                                      status: str) -> None:
    """get_final_response() needs a response.completed event: the endings that send one."""
    server = mock_factory(limit_ending=ending)
    async with AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk, \
            sdk.responses.stream(model="mock-model", input="hello",
                                 max_output_tokens=7) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.status == status
    assert final.output_text == "".join(deltas)
    assert final.usage is not None
    assert final.usage.output_tokens == 7
    assert final.usage.total_tokens == final.usage.input_tokens + 7


async def test_responses_stream_helper_reads_the_incomplete_ending(client: AsyncOpenAI) -> None:
    """The default limit ending, OpenAI's response.incomplete, parses as the SDK's event."""
    async with client.responses.stream(model="mock-model", input="hello",
                                       max_output_tokens=7) as stream:
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
        model="mock-model", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
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
            model="mock-model", messages=MESSAGES,  # type: ignore[arg-type]
            stream_options={"include_usage": True}) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.completion_tokens == 16
    assert final.choices[0].message.content


async def test_chat_stream_helper_reports_the_length_cut(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
            model="mock-model", messages=MESSAGES, max_tokens=5,  # type: ignore[arg-type]
            stream_options={"include_usage": True}) as stream:
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


async def test_sdk_sees_rate_limits_and_auth(client: AsyncOpenAI,
                                             auth_mock_server: MockServerThread) -> None:
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="m", input="x",
                                      extra_headers={"x-mock-fault": "429"})
    async with AsyncOpenAI(base_url=auth_mock_server.base_url, api_key="wrong",
                           max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.responses.create(model="m", input="x")


async def test_sdk_raises_on_stream_errors(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
        extra_headers={"x-mock-fault": "error-event"})
    with pytest.raises(openai.APIError):
        await drain(stream)


@pytest.mark.parametrize("fault", ["crlf", "comments", "done-after", "crlf,comments", "bom"])
async def test_sdk_reads_framing_variants(client: AsyncOpenAI, fault: str) -> None:
    stream = await client.responses.create(model="m", input="x", stream=True,
                                           extra_headers={"x-mock-fault": fault})
    async with stream:
        types = [event.type async for event in stream]
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 16
