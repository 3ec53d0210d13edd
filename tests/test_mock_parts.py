"""Every part of a stream the mock can emit, over real HTTP on 127.0.0.1, read as raw bytes:
tool calls (function, custom, legacy), reasoning, refusal, audio, annotations, several choices,
logprobs, usage details (audio, predictions), a gateway's error chunk, legacy Completions.

For each: the event sequence (types in order, sequence numbers contiguous, ids consistent
between added, delta and done), what the parts assemble to, and the usage. The official SDK's
reading of the same streams is in test_mock_openai_sdk.py.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from engine.mock import MockConfig, MockProcess
from engine.mock.config import DelaySampler
from engine.mock.pacing import Schedule, Ticker
from engine.mock.parts import REFUSAL, chat_logprob, delta_logprob, url_citation
from engine.mock.planning import AUDIO_PART_TOKENS
from engine.mock.stats import MockStats
from tests.test_mock import CHAT, RESP, RESPONSES_SEQUENCE, FakeLoop, FakeTransport, post
from tests.test_mock import split_events as split

if TYPE_CHECKING:
    from tests.conftest import MockFactory

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "hourly": {"type": "boolean"},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
TIME = {"type": "object", "properties": {"tz": {"type": ["string", "null"]}}}
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
RESP_TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER},
    {"type": "function", "name": "get_time", "parameters": TIME},
]
REFUSAL_TEXT = "".join(REFUSAL)


async def events_of(url: str, body: Any, **headers: str) -> list[Any]:
    """The JSON payloads of a stream (and "[DONE]"), each checked to match its `event:` name."""
    status, _, raw = await post(url, body, headers)
    assert status == 200, raw
    got: list[Any] = []
    for name, data in split(raw):
        if data == b"[DONE]":
            got.append("[DONE]")
            continue
        payload = orjson.loads(data)
        if name is not None and "type" in payload:
            assert name == payload["type"]
        got.append(payload)
    return got


async def chat(base_url: str, body: Any = CHAT, **headers: str) -> list[Any]:
    return await events_of(base_url + "/chat/completions", body, **headers)


async def responses(base_url: str, body: Any = RESP, **headers: str) -> list[Any]:
    events = await events_of(base_url + "/responses", body, **headers)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def deltas_of(chunks: list[Any], field: str, index: int = 0) -> list[Any]:
    """The values of `delta.<field>` of choice `index`, in order, where present."""
    return [
        c["choices"][0]["delta"][field]
        for c in chunks
        if isinstance(c, dict)
        and c.get("choices")
        and c["choices"][0]["index"] == index
        and field in c["choices"][0]["delta"]
    ]


def usage_of(chunks: list[Any]) -> dict[str, Any]:
    return next(c["usage"] for c in chunks if isinstance(c, dict) and c.get("usage"))


WITH_USAGE = {"stream_options": {"include_usage": True}}

# --- Tool calls ---------------------------------------------------------------------------------


def assert_chat_calls(chunks: list[Any], names: list[str]) -> list[dict[str, Any]]:
    """The calls of a chat stream, each opened once, then only its argument fragments."""
    assert chunks[-1] == "[DONE]"
    tool_deltas = [d for ds in deltas_of(chunks, "tool_calls") for d in ds]
    first = chunks[0]["choices"][0]["delta"]
    assert (first["role"], first["content"], first["refusal"]) == ("assistant", None, None)
    assert "tool_calls" in first  # OpenAI's first chunk: the role and the first call together
    calls: list[dict[str, Any]] = []
    for delta in tool_deltas:
        if "id" in delta:  # an opening: the next call, in index order, after the previous one
            assert delta["index"] == len(calls)
            assert delta["id"].startswith("call_")
            assert delta["type"] == "function"
            assert delta["function"]["arguments"] == ""
            calls.append({"id": delta["id"], "name": delta["function"]["name"], "arguments": ""})
        else:
            assert set(delta) == {"index", "function"}
            assert set(delta["function"]) == {"arguments"}
            assert delta["index"] == len(calls) - 1
            calls[-1]["arguments"] += delta["function"]["arguments"]
    assert [call["name"] for call in calls] == names
    assert len({call["id"] for call in calls}) == len(calls)
    finish = [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if isinstance(c, dict) and c.get("choices") and c["choices"][0]["finish_reason"]
    ]
    assert finish == ["tool_calls"]
    return calls


@pytest.mark.parametrize(
    ("tool_choice", "header", "names"),
    [
        ("required", None, ["get_weather"]),
        ({"type": "function", "function": {"name": "get_time"}}, None, ["get_time"]),
        ("auto", "tool_calls", ["get_weather"]),
    ],
    ids=["required", "named", "header"],
)
async def test_chat_tool_call(
    base_url: str, tool_choice: Any, header: str | None, names: list[str]
) -> None:
    body = {**CHAT, "tools": CHAT_TOOLS, "tool_choice": tool_choice, **WITH_USAGE}
    headers = {"x-mock-output": header} if header else {}
    chunks = await chat(base_url, body, **headers)
    calls = assert_chat_calls(chunks, names)
    arguments = orjson.loads(calls[0]["arguments"])
    schema = WEATHER if names == ["get_weather"] else TIME
    assert list(arguments) == list(schema["properties"])  # a value for every property, in order
    fragments = deltas_of(chunks, "tool_calls")[1:]
    assert len(fragments) >= 5  # streamed in pieces, not in one
    usage = usage_of(chunks)
    assert usage["completion_tokens"] == 1 + len(fragments)  # the naming token + the fragments


async def test_chat_parallel_tool_calls_cycle_through_the_tools(base_url: str) -> None:
    body = {**CHAT, "tools": CHAT_TOOLS, "tool_choice": "required"}
    chunks = await chat(base_url, body, **{"x-mock-tool-calls": "3"})
    calls = assert_chat_calls(chunks, ["get_weather", "get_time", "get_weather"])
    for call in calls:
        assert isinstance(orjson.loads(call["arguments"]), dict)
    assert calls[0]["arguments"] != calls[2]["arguments"]  # each call its own values
    # parallel_tool_calls: false allows one call only, as the real API.
    single = await chat(
        base_url, {**body, "parallel_tool_calls": False}, **{"x-mock-tool-calls": "3"}
    )
    assert_chat_calls(single, ["get_weather"])


async def test_tool_arguments_are_deterministic(base_url: str) -> None:
    body = {**CHAT, "tools": CHAT_TOOLS, "tool_choice": "required"}
    first = assert_chat_calls(await chat(base_url, body), ["get_weather"])
    again = assert_chat_calls(await chat(base_url, body), ["get_weather"])
    other = assert_chat_calls(await chat(base_url, body, **{"x-mock-seed": "9"}), ["get_weather"])
    assert first[0]["arguments"] == again[0]["arguments"] != other[0]["arguments"]
    assert first[0]["id"] != again[0]["id"]  # ids are fresh, as the real API's


async def test_responses_function_calls(base_url: str) -> None:
    body = {**RESP, "tools": RESP_TOOLS, "tool_choice": "required"}
    events = await responses(base_url, body, **{"x-mock-tool-calls": "2"})
    types = [e["type"] for e in events]
    calls = [i for i, t in enumerate(types) if t == "response.output_item.added"]
    assert len(calls) == 2
    expected = ["response.created", "response.in_progress"]
    for index, call in enumerate(calls):
        added = events[call]
        item = added["item"]
        assert added["output_index"] == index
        assert set(item) == {"id", "type", "status", "arguments", "call_id", "name"}
        assert (item["type"], item["status"], item["arguments"]) == (
            "function_call",
            "in_progress",
            "",
        )
        assert item["id"].startswith("fc_")
        assert item["call_id"].startswith("call_")
        assert item["name"] == ["get_weather", "get_time"][index]
        mine = [e for e in events if e.get("item_id") == item["id"]]
        arg_deltas = [e for e in mine if e["type"] == "response.function_call_arguments.delta"]
        assert all(
            set(e) == {"type", "sequence_number", "item_id", "output_index", "delta"}
            and e["output_index"] == index
            for e in arg_deltas
        )
        done = next(e for e in mine if e["type"] == "response.function_call_arguments.done")
        arguments = "".join(e["delta"] for e in arg_deltas)
        assert done["arguments"] == arguments
        assert isinstance(orjson.loads(arguments), dict)
        item_done = next(
            e
            for e in events
            if e["type"] == "response.output_item.done" and e["output_index"] == index
        )
        assert item_done["item"] == {**item, "status": "completed", "arguments": arguments}
        expected += [
            "response.output_item.added",
            *["response.function_call_arguments.delta"] * len(arg_deltas),
            "response.function_call_arguments.done",
            "response.output_item.done",
        ]
    assert types == [*expected, "response.completed"]
    final = events[-1]["response"]
    assert final["output"] == [
        events[i + 1]["item"] for i, t in enumerate(types[1:]) if t == "response.output_item.done"
    ]
    assert final["tool_choice"] == "required"
    assert final["tools"] == RESP_TOOLS
    usage = final["usage"]
    # Every token is one event (a call's first token is its output_item.added), and each call
    # closes with arguments.done + output_item.done.
    assert usage["output_tokens"] == len(events) - 2 - 2 * 2 - 1
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}


@pytest.mark.parametrize(
    ("path", "body", "headers", "param"),
    [
        ("/chat/completions", CHAT, {"x-mock-output": "tool_calls"}, "tools"),
        ("/responses", {**RESP, "tool_choice": "required"}, {}, "tools"),
        (
            "/chat/completions",
            {
                **CHAT,
                "tools": CHAT_TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            {},
            "tool_choice",
        ),
        (
            "/chat/completions",
            {**CHAT, "tools": CHAT_TOOLS, "tool_choice": "required"},
            {"x-mock-tool-calls": "0"},
            "x-mock-tool-calls",
        ),
        ("/chat/completions", CHAT, {"x-mock-output": "poem"}, "x-mock-output"),
        ("/chat/completions", CHAT, {"x-mock-reasoning-tokens": "-1"}, "x-mock-reasoning-tokens"),
        (
            "/chat/completions",
            CHAT,
            {"x-mock-reasoning-field": "thoughts"},
            "x-mock-reasoning-field",
        ),
        ("/responses", RESP, {"x-mock-reasoning-summary": "yes"}, "x-mock-reasoning-summary"),
        ("/responses", RESP, {"x-mock-cached-tokens": "x"}, "x-mock-cached-tokens"),
        ("/chat/completions", {**CHAT, "n": 0}, {}, "n"),
        ("/chat/completions", {**CHAT, "top_logprobs": 2}, {}, "top_logprobs"),
        ("/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 21}, {}, "top_logprobs"),
        ("/completions", {"model": "m", "prompt": [1, "a"]}, {}, "prompt"),
        ("/completions", {"model": "m"}, {}, "prompt"),
    ],
)
async def test_bad_part_requests_are_400s(
    base_url: str, path: str, body: Any, headers: dict[str, str], param: str
) -> None:
    status, _, raw = await post(base_url + path, body, headers)
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_tools_without_a_forced_call_answer_text(base_url: str) -> None:
    """tool_choice auto (or none): the answer stays plain text, byte for byte the default."""
    events = await responses(base_url, {**RESP, "tools": RESP_TOOLS, "tool_choice": "auto"})
    assert [e["type"] for e in events] == RESPONSES_SEQUENCE
    chunks = await chat(base_url, {**CHAT, "tools": CHAT_TOOLS})
    assert len(deltas_of(chunks, "content")) == 17  # the role chunk's "" and 16 tokens
    assert not deltas_of(chunks, "tool_calls")


# --- Reasoning ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "headers", "field"),
    [
        ({"reasoning_tokens": 3}, {}, "reasoning_content"),
        ({"reasoning_tokens": 3, "reasoning_field": "reasoning"}, {}, "reasoning"),
        ({}, {"x-mock-reasoning-tokens": "3", "x-mock-reasoning-field": "reasoning"}, "reasoning"),
    ],
    ids=["config", "config-vllm-field", "headers"],
)
async def test_chat_reasoning_then_content(
    mock_factory: MockFactory, config: dict[str, Any], headers: dict[str, str], field: str
) -> None:
    server = mock_factory(output_tokens=5, **config)
    chunks = await chat(server.base_url, {**CHAT, **WITH_USAGE}, **headers)
    kinds = [next(iter(c["choices"][0]["delta"])) for c in chunks[1:-3]]
    assert kinds == [field] * 3 + ["content"] * 5  # reasoning first, then the answer
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    usage = usage_of(chunks)
    assert usage["completion_tokens"] == 8  # reasoning tokens count as output, as OpenAI's
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 3
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    # Non-streaming: the same field on the message.
    _, _, raw = await post(
        server.base_url + "/chat/completions", {**CHAT, "stream": False}, headers
    )
    message = orjson.loads(raw)["choices"][0]["message"]
    assert message[field] == "".join(deltas_of(chunks, field))
    assert message["content"] == "".join(deltas_of(chunks, "content"))


REASONING_RAW = [
    "response.output_item.added",
    "response.content_part.added",
    *["response.reasoning_text.delta"] * 3,
    "response.reasoning_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
REASONING_SUMMARY = [
    "response.output_item.added",
    "response.reasoning_summary_part.added",
    *["response.reasoning_summary_text.delta"] * 3,
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
    "response.output_item.done",
]


def assert_reasoning_item(events: list[Any], summary: bool, count: int) -> str:
    """The reasoning item at output_index 0: added, its deltas, done; returns its text."""
    added = next(e for e in events if e["type"] == "response.output_item.added")
    item_id = added["item"]["id"]
    assert added["item"] == {"id": item_id, "type": "reasoning", "summary": [], "content": []}
    assert item_id.startswith("rs_")
    kind = "reasoning_summary_text" if summary else "reasoning_text"
    index = "summary_index" if summary else "content_index"
    delta_events = [e for e in events if e["type"] == f"response.{kind}.delta"]
    assert len(delta_events) == count
    assert all(
        set(e) == {"type", "sequence_number", "item_id", "output_index", index, "delta"}
        and (e["item_id"], e["output_index"], e[index]) == (item_id, 0, 0)
        for e in delta_events
    )
    text = "".join(e["delta"] for e in delta_events)
    done = next(e for e in events if e["type"] == f"response.{kind}.done")
    assert (done["item_id"], done["text"]) == (item_id, text)
    part_type = "summary_text" if summary else "reasoning_text"
    item_done = next(e for e in events if e["type"] == "response.output_item.done")
    parts = [{"type": part_type, "text": text}]
    assert item_done["item"] == {
        "id": item_id,
        "type": "reasoning",
        "summary": parts if summary else [],
        "content": [] if summary else parts,
    }
    return text


@pytest.mark.parametrize(
    ("body", "headers", "summary"),
    [
        ({}, {"x-mock-reasoning-tokens": "3"}, False),
        ({}, {"x-mock-reasoning-tokens": "3", "x-mock-reasoning-summary": "1"}, True),
        (
            {"reasoning": {"effort": "low", "summary": "auto"}},
            {"x-mock-reasoning-tokens": "3"},
            True,
        ),
    ],
    ids=["raw-text", "summary-header", "summary-body"],
)
async def test_responses_reasoning_item_then_message(
    base_url: str, body: dict[str, Any], headers: dict[str, str], summary: bool
) -> None:
    events = await responses(base_url, {**RESP, **body}, **headers)
    types = [e["type"] for e in events]
    reasoning = REASONING_SUMMARY if summary else REASONING_RAW
    message = RESPONSES_SEQUENCE[2:-1]
    assert types == [*RESPONSES_SEQUENCE[:2], *reasoning, *message, "response.completed"]
    text = assert_reasoning_item(events, summary, 3)
    assert all(e["output_index"] == 1 for e in events[2 + len(reasoning) : -1])
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    stored = final["output"][0]["summary" if summary else "content"][0]["text"]
    assert stored == text
    usage = final["usage"]
    assert usage["output_tokens"] == 3 + 16
    assert usage["output_tokens_details"] == {"reasoning_tokens": 3}
    assert usage["total_tokens"] == usage["input_tokens"] + 19


async def test_responses_reasoning_request_and_config(mock_factory: MockFactory) -> None:
    """`reasoning: {...}` asks for reasoning: the configured count, else 8; effort "none" for
    none; the config's summary option picks the summary form."""
    plain = mock_factory(output_tokens=2)
    events = await responses(plain.base_url, {**RESP, "reasoning": {"effort": "low"}})
    assert assert_reasoning_item(events, False, 8)
    assert events[-1]["response"]["reasoning"] == {"effort": "low", "summary": None}
    events = await responses(plain.base_url, {**RESP, "reasoning": {"effort": "none"}})
    assert [e["type"] for e in events][2] == "response.output_item.added"
    assert events[2]["item"]["type"] == "message"
    configured = mock_factory(output_tokens=2, reasoning_tokens=5, reasoning_summary=True)
    events = await responses(configured.base_url)
    assert assert_reasoning_item(events, True, 5)


@pytest.mark.parametrize(
    ("limit", "reasoning", "text", "last"),
    [
        (5, 3, 2, "response.incomplete"),
        (2, 3, 0, "response.incomplete"),
    ],
)
async def test_the_limit_counts_reasoning(
    base_url: str, limit: int, reasoning: int, text: int, last: str
) -> None:
    """max_output_tokens caps reasoning + answer, as OpenAI counts them; a limit inside the
    reasoning leaves no message at all."""
    events = await responses(
        base_url,
        {**RESP, "max_output_tokens": limit},
        **{"x-mock-reasoning-tokens": str(reasoning)},
    )
    types = [e["type"] for e in events]
    assert types[-1] == last
    said = min(reasoning, limit)
    assert types.count("response.reasoning_text.delta") == said
    assert types.count("response.output_text.delta") == text
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning"] + ["message"] * bool(text)
    assert final["usage"]["output_tokens"] == limit
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == said


async def arrival_times(url: str, body: Any, headers: dict[str, str]) -> list[float]:
    """perf_counter at the arrival of each reasoning or text delta."""
    times: list[float] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=orjson.dumps(body), headers=headers) as resp,
    ):
        async for chunk in resp.content.iter_any():
            times += [time.perf_counter()] * chunk.count(b"_text.delta\n")
    return times


async def test_reasoning_tokens_are_paced_like_text(base_url: str) -> None:
    """First reasoning token at TTFT, then one ITL per token through reasoning and text (lower
    bounds only: the server admitted the request after `started`)."""
    started = time.perf_counter()
    times = await arrival_times(
        base_url + "/responses",
        {**RESP, "max_output_tokens": 8},
        {"x-mock-ttft-ms": "60", "x-mock-itl-ms": "10", "x-mock-reasoning-tokens": "4"},
    )
    assert len(times) == 8
    for k, arrived in enumerate(times):
        assert arrived - started >= 0.06 + k * 0.01, k


# --- Refusal ------------------------------------------------------------------------------------


async def test_chat_refusal(base_url: str) -> None:
    chunks = await chat(base_url, {**CHAT, **WITH_USAGE}, **{"x-mock-output": "refusal"})
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None, "refusal": ""}
    assert "".join(deltas_of(chunks, "refusal")) == REFUSAL_TEXT
    assert deltas_of(chunks, "content") == [None]  # only the role chunk's null
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert usage_of(chunks)["completion_tokens"] == len(REFUSAL)
    _, _, raw = await post(
        base_url + "/chat/completions", {**CHAT, "stream": False}, {"x-mock-output": "refusal"}
    )
    message = orjson.loads(raw)["choices"][0]["message"]
    assert (message["content"], message["refusal"]) == (None, REFUSAL_TEXT)


async def test_responses_refusal(base_url: str) -> None:
    events = await responses(base_url, **{"x-mock-output": "refusal"})
    types = [e["type"] for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.refusal.delta"] * len(REFUSAL),
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    item_id = events[2]["item"]["id"]
    assert events[3]["part"] == {"type": "refusal", "refusal": ""}
    refusal_deltas = events[4 : 4 + len(REFUSAL)]
    assert all(
        set(e) == {"type", "sequence_number", "item_id", "output_index", "content_index", "delta"}
        and e["item_id"] == item_id
        for e in refusal_deltas
    )
    assert "".join(e["delta"] for e in refusal_deltas) == REFUSAL_TEXT
    assert events[-4]["refusal"] == REFUSAL_TEXT
    assert events[-3]["part"] == {"type": "refusal", "refusal": REFUSAL_TEXT}
    assert events[-1]["response"]["output"][0]["content"] == [
        {"type": "refusal", "refusal": REFUSAL_TEXT}
    ]


# --- Several choices ----------------------------------------------------------------------------


async def test_chat_n_choices_interleaved(base_url: str) -> None:
    chunks = await chat(base_url, {**CHAT, "n": 3, **WITH_USAGE})
    body = [c for c in chunks if isinstance(c, dict) and c["choices"]]
    assert all(len(c["choices"]) == 1 for c in body)  # each chunk carries one choice
    order = [c["choices"][0]["index"] for c in body]
    assert order == [0, 1, 2] * 18  # role chunks, 16 tokens, finishes: in step
    texts = ["".join(deltas_of(chunks, "content", i)) for i in range(3)]
    assert len(set(texts)) == 3  # each its own text
    assert [c["choices"][0]["finish_reason"] for c in body[-3:]] == ["stop"] * 3
    assert usage_of(chunks)["completion_tokens"] == 3 * 16
    solo = await chat(base_url)
    assert "".join(deltas_of(solo, "content")) == texts[0]  # choice 0 is the n=1 answer


async def test_chat_choices_of_different_lengths_finish_apart(mock_factory: MockFactory) -> None:
    server = mock_factory(output_tokens=1, output_tokens_max=12)
    chunks = await chat(server.base_url, {**CHAT, "n": 4, **WITH_USAGE})
    lengths = [len(deltas_of(chunks, "content", i)) - 1 for i in range(4)]
    assert len(set(lengths)) > 1
    positions = [
        [
            k
            for k, c in enumerate(chunks)
            if isinstance(c, dict) and c["choices"] and c["choices"][0]["index"] == index
        ]
        for index in range(4)
    ]
    longest = positions[lengths.index(max(lengths))]
    for length, mine in zip(lengths, positions, strict=True):
        assert len(mine) == 1 + length + 1  # role, tokens, finish
        last = chunks[mine[-1]]["choices"][0]
        assert (last["finish_reason"], last["delta"]) == ("stop", {})
        assert chunks[mine[-2]]["choices"][0]["delta"].get("content") is not None
        assert mine[-1] == mine[-2] + 1 + sum(  # right after its last token's step
            1 for p in positions for k in p if mine[-2] < k < mine[-1]
        )
        if length < max(lengths):  # before the longest choice ends
            assert mine[-1] < longest[-2]
    assert usage_of(chunks)["completion_tokens"] == sum(lengths)


# --- Logprobs -----------------------------------------------------------------------------------


async def test_chat_logprobs(base_url: str) -> None:
    chunks = await chat(base_url, {**CHAT, "logprobs": True, "top_logprobs": 3})
    content = [c["choices"][0] for c in chunks[1:-2]]
    assert len(content) == 16
    for choice in content:
        token = choice["delta"]["content"]
        assert choice["logprobs"] == {"content": [chat_logprob(token, 3)], "refusal": None}
        entry = choice["logprobs"]["content"][0]
        assert entry["bytes"] == list(token.encode())
        assert entry["top_logprobs"][0]["token"] == token  # the token is the likeliest
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] <= 0
        assert sorted(t["logprob"] for t in entry["top_logprobs"])[::-1] == [
            t["logprob"] for t in entry["top_logprobs"]
        ]
    assert chunks[0]["choices"][0]["logprobs"] is None
    plain = await chat(base_url, {**CHAT, "logprobs": False})
    assert all(c["choices"][0]["logprobs"] is None for c in plain[:-1])


@pytest.mark.parametrize(
    ("body", "top"), [({"include": ["message.output_text.logprobs"]}, 0), ({"top_logprobs": 2}, 2)]
)
async def test_responses_logprobs(base_url: str, body: dict[str, Any], top: int) -> None:
    events = await responses(base_url, {**RESP, **body})
    text_deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert all(e["logprobs"] == [delta_logprob(e["delta"], top)] for e in text_deltas)
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert [lp["token"] for lp in done["logprobs"]] == [e["delta"] for e in text_deltas]
    assert events[-1]["response"]["output"][0]["content"][0]["logprobs"] == done["logprobs"]
    plain = await responses(base_url)
    assert all(e["logprobs"] == [] for e in plain if e["type"] == "response.output_text.delta")


# --- Usage details ------------------------------------------------------------------------------


async def test_cached_tokens(base_url: str) -> None:
    chunks = await chat(base_url, {**CHAT, **WITH_USAGE}, **{"x-mock-cached-tokens": "4"})
    assert usage_of(chunks)["prompt_tokens_details"] == {"cached_tokens": 4, "audio_tokens": 0}
    events = await responses(base_url, **{"x-mock-cached-tokens": "4"})
    assert events[-1]["response"]["usage"]["input_tokens_details"] == {"cached_tokens": 4}
    events = await responses(base_url, **{"x-mock-cached-tokens": "1000"})
    usage = events[-1]["response"]["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] == usage["input_tokens"]  # at most


# --- Legacy Completions -------------------------------------------------------------------------

COMPLETION = {"model": "m", "prompt": "Once upon a time", "stream": True}


@pytest.mark.parametrize(("limit", "finish"), [(5, "length"), (None, "stop")])
async def test_legacy_completions_stream(
    mock_factory: MockFactory, limit: int | None, finish: str
) -> None:
    server = mock_factory()
    body = {**COMPLETION, "max_tokens": limit, **WITH_USAGE}
    chunks = await events_of(server.base_url + "/completions", body)
    assert chunks[-1] == "[DONE]"
    *tokens, last, usage = chunks[:-1]
    count = limit or 16
    assert len(tokens) == count
    for chunk in [*tokens, last, usage]:
        assert list(chunk) == ["id", "object", "created", "model", "choices", "usage"]
        assert chunk["id"].startswith("cmpl-")
        assert chunk["object"] == "text_completion"
    assert all(
        c["choices"]
        == [{"text": c["choices"][0]["text"], "index": 0, "logprobs": None, "finish_reason": None}]
        and c["usage"] is None
        for c in tokens
    )
    assert last["choices"] == [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}]
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": count,
        "total_tokens": 4 + count,
    }
    status, _, raw = await post(server.base_url + "/completions", {**body, "stream": False})
    whole = orjson.loads(raw)
    assert status == 200
    assert whole["choices"][0]["text"] == "".join(c["choices"][0]["text"] for c in tokens)
    assert whole["choices"][0]["finish_reason"] == finish
    assert server.stats.requests["/v1/completions"] == 2


async def test_legacy_completions_prompt_list_and_faults(base_url: str) -> None:
    body = {**COMPLETION, "prompt": ["one two", "three"], "max_tokens": 3}
    chunks = await events_of(base_url + "/completions", body)
    order = [c["choices"][0]["index"] for c in chunks[:-1]]
    assert order == [0, 1] * 4  # one choice per prompt, interleaved, then both finishes
    plain = {**COMPLETION, "stream_options": {"include_usage": True}}
    chunks = await events_of(base_url + "/completions", plain, **{"x-mock-fault": "error-event"})
    assert chunks[-1]["error"]["type"] == "server_error"  # the error event, no [DONE]
    assert len(chunks) == 8 + 1
    status, _, _ = await post(base_url + "/completions", COMPLETION, {"x-mock-fault": "429"})
    assert status == 429


# --- Faults, pacing and stats with parts --------------------------------------------------------


@pytest.mark.parametrize("fault", ["error-event", "incomplete", "failed"])
async def test_fault_endings_cut_parts_mid_answer(base_url: str, fault: str) -> None:
    """Half the answer (4 reasoning + 16 text -> 10 tokens), then the fault's ending."""
    events = await responses(base_url, **{"x-mock-reasoning-tokens": "4", "x-mock-fault": fault})
    types = [e["type"] for e in events]
    assert types.count("response.reasoning_text.delta") == 4
    assert types.count("response.output_text.delta") == 6
    assert (
        types[-1]
        == {
            "error-event": "error",
            "incomplete": "response.incomplete",
            "failed": "response.failed",
        }[fault]
    )


@pytest.mark.parametrize("fault", ["crlf,comments", "bom", "done-after"])
async def test_framing_faults_keep_every_part(base_url: str, fault: str) -> None:
    """The reshaping writer (one batch per due step) writes the same events as the ticker."""
    body = {**RESP, "tools": RESP_TOOLS, "tool_choice": "required"}
    headers = {"x-mock-reasoning-tokens": "3", "x-mock-tool-calls": "2"}
    plain = [e["type"] for e in await responses(base_url, body, **headers)]
    framed = await events_of(base_url + "/responses", body, **headers, **{"x-mock-fault": fault})
    if fault == "done-after":
        assert framed.pop() == "[DONE]"
    assert [e["type"] for e in framed] == plain
    assert [e["sequence_number"] for e in framed] == list(range(len(plain)))


async def test_chat_on_responses_speaks_every_part_as_chat(base_url: str) -> None:
    body = {**RESP, "tools": RESP_TOOLS, "tool_choice": "required"}
    chunks = await events_of(
        base_url + "/responses",
        body,
        **{"x-mock-fault": "chat-on-responses", "x-mock-tool-calls": "2"},
    )
    assert_chat_calls(chunks, ["get_weather", "get_time"])


async def test_events_sent_counts_every_event_of_a_multi_item_stream(
    mock_factory: MockFactory,
) -> None:
    server = mock_factory()
    body = {**RESP, "tools": RESP_TOOLS, "tool_choice": "required"}
    events = await responses(
        server.base_url, body, **{"x-mock-tool-calls": "2", "x-mock-reasoning-tokens": "3"}
    )
    assert server.stats.events_sent == len(events)


def test_ticker_counts_the_events_of_steps_that_carry_several() -> None:
    """A step that is more than one event (an item opening or closing, several choices):
    `delta()` says None and the ticker writes `deltas()` whole, counting each event."""

    class TwoPerStep:
        n = 5

        def delta(self, index: int) -> bytes | None:
            return None if index % 2 else b"%d\n\n" % index

        def deltas(self, start: int, stop: int) -> list[bytes]:
            return [
                b"%d%s\n\n" % (k, x)
                for k in range(start, stop)
                for x in ((b"", b"+") if k % 2 else (b"",))
            ]

        def tail(self) -> list[bytes]:
            return [b"end\n\n"]

    loop, stats = FakeLoop(), MockStats()
    try:
        config = MockConfig(ttft_ms=10.0, itl_ms=5.0)
        transport = FakeTransport(loop)
        schedule = Schedule(5, 0.0, 0.01, DelaySampler(config, 5.0, random.Random(0)))
        Ticker(loop, stats, clock=loop.exact).run(TwoPerStep(), schedule, transport)  # type: ignore[arg-type]
        loop.run()
    finally:
        loop.futures.close()
    written = [event for _, _, batch in transport.writes for event in batch]
    assert written == [b"0", b"1", b"1+", b"2", b"3", b"3+", b"4", b"end"]
    assert stats.events_sent == len(written)


def test_mock_process_carries_the_reasoning_options() -> None:
    """MockProcess rebuilds the config from to_argv: reasoning count, field and summary."""
    config = MockConfig(
        output_tokens=2, reasoning_tokens=2, reasoning_field="reasoning", reasoning_summary=True
    )

    async def exercise(base_url: str) -> tuple[list[Any], list[Any]]:
        return await chat(base_url), await responses(base_url)

    with MockProcess(config) as proc:
        chunks, events = asyncio.run(exercise(proc.base_url))
    assert len(deltas_of(chunks, "reasoning")) == 2
    assert assert_reasoning_item(events, True, 2)


# --- Custom tools, legacy functions, audio, annotations, tiers, predictions -------------------

CUSTOM_CHAT = {**CHAT, "tools": [{"type": "custom", "custom": {"name": "sql"}}]}
CUSTOM_RESP = {**RESP, "tools": [{"type": "custom", "name": "sql"}]}
LEGACY_CHAT = {**CHAT, "functions": [{"name": "get_time", "parameters": TIME}]}


async def test_chat_custom_tool_call(base_url: str) -> None:
    chunks = await chat(base_url, {**CUSTOM_CHAT, "tool_choice": "required"})
    calls = [d for ds in deltas_of(chunks, "tool_calls") for d in ds]
    opening, *fragments = calls
    assert (opening["type"], opening["custom"]) == ("custom", {"name": "sql", "input": ""})
    assert opening["id"].startswith("call_")
    assert all(set(d) == {"index", "custom"} and set(d["custom"]) == {"input"} for d in fragments)
    text = "".join(d["custom"]["input"] for d in fragments)
    assert text
    assert not text.startswith(" ")  # free text, not JSON
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    status, _, raw = await post(
        base_url + "/chat/completions",
        {
            **CUSTOM_CHAT,
            "stream": False,
            "tool_choice": {"type": "custom", "custom": {"name": "sql"}},
        },
    )
    (call,) = orjson.loads(raw)["choices"][0]["message"]["tool_calls"]
    assert (status, call["type"], call["custom"]) == (200, "custom", {"name": "sql", "input": text})


async def test_responses_custom_tool_call(base_url: str) -> None:
    events = await responses(base_url, {**CUSTOM_RESP, "tool_choice": "required"})
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["type"] == "custom_tool_call"
    assert (added["item"]["input"], added["item"]["name"]) == ("", "sql")
    deltas = [e for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert {d["item_id"] for d in deltas} == {added["item"]["id"]}
    done = next(e for e in events if e["type"] == "response.custom_tool_call_input.done")
    assert done["input"] == "".join(d["delta"] for d in deltas)
    assert events[-1]["response"]["output"][0]["input"] == done["input"]


async def test_chat_legacy_function_call(base_url: str) -> None:
    """`functions` + `function_call: {name}`: one call, no index, no id."""
    body = {**LEGACY_CHAT, "function_call": {"name": "get_time"}, "stream_options": {}}
    chunks = await chat(base_url, body, **{"x-mock-tool-calls": "3"})
    first, *rest = deltas_of(chunks, "function_call")
    assert first == {"name": "get_time", "arguments": ""}
    assert all(set(d) == {"arguments"} for d in rest)
    assert chunks[0]["choices"][0]["delta"]["content"] is None
    assert chunks[-2]["choices"][0]["finish_reason"] == "function_call"
    forced = await chat(base_url, LEGACY_CHAT, **{"x-mock-output": "tool_calls"})
    assert deltas_of(forced, "function_call")
    _, _, raw = await post(base_url + "/chat/completions", {**body, "stream": False})
    message = orjson.loads(raw)["choices"][0]["message"]
    assert message["function_call"] == {
        "name": "get_time",
        "arguments": "".join(d["arguments"] for d in rest),
    }
    assert "tool_calls" not in message


def spoken(data: str) -> str:
    """What the mock's audio says: its bytes without the padding."""
    return base64.b64decode(data).replace(b"\0", b"").decode()


async def test_chat_audio_answer(base_url: str) -> None:
    body = {**CHAT, **WITH_USAGE, "modalities": ["text", "audio"], "max_tokens": 4}
    chunks = await chat(base_url, body)
    assert chunks[0]["choices"][0]["delta"]["content"] is None
    first, *rest = deltas_of(chunks, "audio")
    assert set(first) == {"id", "transcript", "data", "expires_at"}
    assert all(set(d) == {"transcript", "data"} for d in rest)
    transcript = "".join(d["transcript"] for d in [first, *rest])
    assert spoken("".join(d["data"] for d in [first, *rest])) == transcript  # chunks join
    assert all(spoken(d["data"]) == d["transcript"] for d in [first, *rest])
    usage = usage_of(chunks)
    assert usage["completion_tokens_details"]["audio_tokens"] == 4
    _, _, raw = await post(base_url + "/chat/completions", {**body, "stream": False})
    message = orjson.loads(raw)["choices"][0]["message"]
    assert (message["content"], message["audio"]["transcript"]) == (None, transcript)
    forced = await chat(base_url, CHAT, **{"x-mock-output": "audio"})
    assert deltas_of(forced, "audio")


async def test_responses_audio_answer(base_url: str) -> None:
    events = await responses(
        base_url, {**RESP, "max_output_tokens": 3}, **{"x-mock-output": "audio"}
    )
    assert [e["type"] for e in events] == [
        *RESPONSES_SEQUENCE[:2],  # created, in_progress, and no item
        *["response.audio.transcript.delta"] * 3,
        "response.audio.delta",
        "response.audio.done",
        "response.audio.transcript.done",
        "response.incomplete",
    ]
    transcript = "".join(e["delta"] for e in events[2:5])
    assert spoken(events[5]["delta"]) == transcript
    assert events[-1]["response"]["output"] == []


async def test_annotations(base_url: str) -> None:
    chunks = await chat(base_url, {**CHAT, "web_search_options": {}})
    (notes,) = deltas_of(chunks, "annotations")
    text = "".join(deltas_of(chunks, "content"))
    assert notes == [url_citation(0, len(text), chat=True)]
    assert notes[0]["url_citation"]["end_index"] == len(text)
    events = await responses(base_url, **{"x-mock-annotations": "2"})
    added = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert [e["annotation_index"] for e in added] == [0, 1]
    part = events[-1]["response"]["output"][0]["content"][0]
    assert part["annotations"] == [e["annotation"] for e in added]
    assert added[1]["annotation"]["type"] == "url_citation"


async def test_service_tier_prediction_and_audio_input_are_reported(base_url: str) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "input_audio", "input_audio": {"data": "AAA=", "format": "wav"}},
            ],
        }
    ]
    body = {
        **CHAT,
        **WITH_USAGE,
        "messages": messages,
        "service_tier": "priority",
        "prediction": {"type": "content", "content": [{"type": "text", "text": "a b c d e"}]},
    }
    chunks = await chat(base_url, body)
    assert {c["service_tier"] for c in chunks[:-1]} == {"priority"}
    usage = usage_of(chunks)
    assert usage["prompt_tokens_details"]["audio_tokens"] == AUDIO_PART_TOKENS
    details = usage["completion_tokens_details"]
    assert (details["accepted_prediction_tokens"], details["rejected_prediction_tokens"]) == (2, 3)
    auto = await chat(base_url, {**CHAT, "service_tier": "auto"})
    assert auto[0]["service_tier"] == "default"
    events = await responses(base_url, {**RESP, "service_tier": "flex"})
    assert events[-1]["response"]["service_tier"] == "flex"


async def test_legacy_completions_logprobs(base_url: str) -> None:
    body = {**COMPLETION, "max_tokens": 3, "logprobs": 2}
    chunks = await events_of(base_url + "/completions", body)
    tokens = [c["choices"][0] for c in chunks[:3]]
    offsets = [0]
    for t in tokens[:-1]:
        offsets.append(offsets[-1] + len(t["text"]))
    for t, offset in zip(tokens, offsets, strict=True):
        lp = t["logprobs"]
        assert lp["tokens"] == [t["text"]]
        assert lp["text_offset"] == [offset]
        assert next(iter(lp["top_logprobs"][0])) == t["text"]
        assert len(lp["top_logprobs"][0]) == 2
    _, _, raw = await post(base_url + "/completions", {**body, "stream": False})
    whole = orjson.loads(raw)["choices"][0]["logprobs"]
    assert whole["tokens"] == [t["text"] for t in tokens]
    assert whole["text_offset"] == offsets
    status, _, _ = await post(base_url + "/completions", {**body, "logprobs": 6})
    assert status == 400


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
async def test_a_gateway_error_chunk(base_url: str, path: str) -> None:
    body = (
        {**CHAT, "max_tokens": 4}
        if path == "/chat/completions"
        else {**COMPLETION, "max_tokens": 4}
    )
    chunks = await events_of(base_url + path, body, **{"x-mock-fault": "error-chunk"})
    *_, error_chunk, done = chunks
    assert done == "[DONE]"
    assert error_chunk["error"] == {"code": 502, "message": "Provider disconnected (mock)"}
    assert error_chunk["choices"][0]["finish_reason"] == "error"
    assert "annotations" not in error_chunk["choices"][0].get("delta", {})
    events = await responses(base_url, **{"x-mock-fault": "error-chunk"})
    assert events[-1]["type"] == "error"  # the Responses API's way


async def test_a_named_tool_must_exist_whatever_its_kind(base_url: str) -> None:
    choice = {"type": "custom", "custom": {"name": "nope"}}
    status, _, raw = await post(
        base_url + "/chat/completions", {**CUSTOM_CHAT, "tool_choice": choice}, {}
    )
    assert (status, orjson.loads(raw)["error"]["param"]) == (400, "tool_choice")
