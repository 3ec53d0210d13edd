"""Every part of a stream, assembled: tool calls, reasoning, refusals, logprobs, several
choices, legacy completions; shaped as the real servers send them (OpenAI, vLLM, llama.cpp)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest

from engine.assembly import NO_TERMINAL_EVENT, ResponseAssembler, ToolCall
from engine.events import Delta, Dialect, Ending, EventDecoder, StreamEvent
from engine.handlers import Callback
from engine.sse import SSEParser


def feed(shape: Dialect, *payloads: dict[str, Any], typed: bool = True) -> ResponseAssembler:
    """Each payload as one SSE event in its own chunk (arrival time 1000 * position)."""
    asm = ResponseAssembler(shape)
    decoder = EventDecoder()
    for t, payload in enumerate(payloads):
        head = f"event: {payload['type']}\n".encode() if typed and "type" in payload else b""
        raw = head + b"data: " + orjson.dumps(payload) + b"\n\n"
        for event in decoder.decode(SSEParser().feed(raw), 1000 * (t + 1)):
            asm(event)
    return asm


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, index: int = 0, **extra: Any
) -> dict[str, Any]:
    choices = (
        []
        if delta is None
        else [{"index": index, "delta": delta, "finish_reason": finish, **extra}]
    )
    return {
        "object": "chat.completion.chunk",
        "id": "c1",
        "model": "m",
        "created": 7,
        "choices": choices,
    }


# OpenAI's parallel tool calls: id and name in the first fragment, arguments in pieces.
TOOL_CHUNKS = [
    chunk({"role": "assistant", "content": None}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz"'},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': "CET"}'}}]}),
    chunk({}, "tool_calls"),
    {**chunk(), "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}},
]


def test_chat_tool_calls_are_assembled_from_their_fragments() -> None:
    asm = feed(Dialect.CHAT, *TOOL_CHUNKS, typed=False)
    assert asm.choices[0].tool_calls == [
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", '{"tz": "CET"}'),
    ]
    message = asm.response()["choices"][0]
    assert message["message"]["content"] is None  # as a non-streaming call returns it
    assert message["message"]["tool_calls"][1] == {  # merged as openai-python merges them
        "index": 1,
        "id": "call_b",
        "type": "function",
        "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
    }
    assert message["finish_reason"] == "tool_calls"
    assert asm.ending.finish_reason == "tool_calls"
    assert list(asm.token_times_ns) == [2000, 3000, 4000, 5000, 6000]  # every fragment is a token
    assert asm.first_text_ns is None


@pytest.mark.parametrize(
    ("field", "server"), [("reasoning_content", "llama.cpp"), ("reasoning", "vLLM")]
)
def test_chat_reasoning_under_either_name(field: str, server: str) -> None:
    asm = feed(
        Dialect.CHAT,
        chunk({"role": "assistant", "content": ""}),
        chunk({field: "Let me"}),
        chunk({field: " think."}),
        chunk({"content": "Yes"}),
        chunk({}, "stop"),
        typed=False,
    )
    assert (asm.choices[0].reasoning, asm.text) == ("Let me think.", "Yes"), server
    assert asm.response()["choices"][0]["message"][field] == "Let me think."
    assert list(asm.token_times_ns) == [2000, 3000, 4000]
    assert asm.first_text_ns == 4000


def test_a_chunk_with_both_reasoning_names_counts_once() -> None:
    asm = feed(
        Dialect.CHAT,
        chunk({"reasoning": "hm", "reasoning_content": "hm"}),
        chunk({"content": "ok"}, "stop"),
        typed=False,
    )
    assert asm.choices[0].reasoning == "hm"


def test_chat_refusal_and_logprobs() -> None:
    lp = {"token": "No", "logprob": -0.1, "bytes": [78, 111], "top_logprobs": []}
    asm = feed(
        Dialect.CHAT,
        chunk({"refusal": "I can't"}, logprobs={"refusal": [lp]}),
        chunk({"refusal": " help."}),
        chunk({"content": "Hi"}, logprobs={"content": [lp]}),
        chunk({}, "stop"),
        typed=False,
    )
    choice = asm.response()["choices"][0]
    assert choice["message"]["refusal"] == "I can't help."
    assert choice["logprobs"] == {"content": [lp], "refusal": [lp]}


def test_several_choices_each_with_its_text_and_finish_reason() -> None:
    asm = feed(
        Dialect.CHAT,
        chunk({"content": "A"}, index=0),
        chunk({"content": "B"}, index=1),
        chunk({"content": "a"}, index=0),
        chunk({}, "length", index=1),
        chunk({"content": "b"}, index=1),
        chunk({}, "stop", index=0),
        typed=False,
    )
    choices = asm.response()["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "Aa", "stop"),
        (1, "Bb", "length"),
    ]
    assert asm.ending.finish_reason == "stop"  # choice 0's, not the last one seen


RESPONSES_TOOL = [
    {
        "type": "response.created",
        "response": {"id": "resp_1", "model": "m", "status": "in_progress"},
    },
    {
        "type": "response.output_item.added",
        "output_index": 0,
        "item": {
            "id": "fc_1",
            "type": "function_call",
            "call_id": "call_x",
            "name": "lookup",
            "arguments": "",
        },
    },
    {
        "type": "response.function_call_arguments.delta",
        "item_id": "fc_1",
        "output_index": 0,
        "delta": '{"q": ',
    },
    {
        "type": "response.function_call_arguments.delta",
        "item_id": "fc_1",
        "output_index": 0,
        "delta": '"x"}',
    },
    {
        "type": "response.reasoning_text.delta",
        "item_id": "rs_1",
        "output_index": 1,
        "content_index": 0,
        "delta": "because",
    },
    {
        "type": "response.reasoning_summary_text.delta",
        "item_id": "rs_1",
        "output_index": 1,
        "summary_index": 0,
        "delta": "short",
    },
    {
        "type": "response.refusal.delta",
        "item_id": "msg_1",
        "output_index": 2,
        "content_index": 0,
        "delta": "no",
    },
]


def test_responses_parts_without_a_terminal_event_are_assembled() -> None:
    """A gateway that ends with [DONE] and no response.completed loses nothing: each item is
    its `output_item.added` (or a stand-in) with its deltas in, and the result says it never
    ended (the SDK raises)."""
    asm = feed(Dialect.RESPONSES, *RESPONSES_TOOL)
    choice = asm.choices[0]
    assert choice.tool_calls == [ToolCall("call_x", "lookup", '{"q": "x"}', "function_call")]
    assert (choice.reasoning, choice.reasoning_summary, choice.refusal) == (
        "because",
        "short",
        "no",
    )
    response = asm.response()
    assert (response["id"], response["status"]) == ("resp_1", "in_progress")  # as last said
    assert response["output"] == [
        {
            "id": "fc_1",
            "type": "function_call",
            "call_id": "call_x",
            "name": "lookup",
            "arguments": '{"q": "x"}',
        },
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "short"}],
            "content": [{"type": "reasoning_text", "text": "because"}],
        },
        {
            "id": "msg_1",
            "type": "message",
            "status": "in_progress",
            "content": [{"type": "refusal", "refusal": "no"}],
            "role": "assistant",
        },
    ]
    assert asm.ending == Ending("incomplete", NO_TERMINAL_EVENT, None)


def test_responses_parts_come_from_the_terminal_response_when_sent() -> None:
    final = {
        "id": "resp_1",
        "status": "completed",
        "output": [
            {
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "S"}],
                "content": [{"type": "reasoning_text", "text": "R"}],
            },
            {"type": "function_call", "call_id": "call_x", "name": "lookup", "arguments": "{}"},
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "T", "logprobs": [1]},
                    {"type": "refusal", "refusal": "F"},
                ],
            },
        ],
        "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
    }
    asm = feed(Dialect.RESPONSES, {"type": "response.completed", "response": final})
    choice = asm.choices[0]
    assert (choice.reasoning, choice.reasoning_summary, choice.refusal, choice.logprobs) == (
        "R",
        "S",
        "F",
        [1],
    )
    assert choice.tool_calls == [ToolCall("call_x", "lookup", "{}", "function_call")]
    assert asm.response() == final  # as the server wrote it


def test_legacy_completions_chunks() -> None:
    def piece(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "object": "text_completion",
            "id": "cmpl-1",
            "model": "m",
            "created": 3,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    asm = feed(
        Dialect.COMPLETIONS,
        piece("Once"),
        piece(" upon"),
        piece("", "length"),
        {
            "object": "text_completion",
            "id": "cmpl-1",
            "choices": [],
            "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
        },
        typed=False,
    )
    body = asm.response()
    assert (asm.text, asm.dialect) == ("Once upon", Dialect.COMPLETIONS)
    assert body["object"] == "text_completion"
    assert body["choices"] == [
        {"index": 0, "text": "Once upon", "logprobs": None, "finish_reason": "length"}
    ]
    assert asm.ending.status == "incomplete"


def test_callbacks_subscribe_to_kinds_of_delta() -> None:
    seen: dict[str, list[Delta]] = {"tool_call": [], "reasoning": []}
    handlers = [
        Callback(lambda ev, k=k: seen[k].extend(d for d in ev.deltas if d.kind == k), kinds=[k])
        for k in seen
    ]
    decoder = EventDecoder()
    raw = b"".join(
        b"data: " + orjson.dumps(c) + b"\n\n"
        for c in [*TOOL_CHUNKS[:3], chunk({"reasoning": "hmm"})]
    )
    for event in decoder.decode(SSEParser().feed(raw), 1):
        for handler in handlers:
            handler(event)
    assert [d.text for d in seen["tool_call"]] == ["", '{"city": ']
    assert seen["tool_call"][0].name == "get_weather"
    assert [d.text for d in seen["reasoning"]] == ["hmm"]


def test_an_event_without_tokens_has_no_deltas() -> None:
    event = StreamEvent(b'{"type": "response.in_progress"}', "response.in_progress")
    assert event.deltas == ()
    assert not event.has_token


def test_a_flood_of_tiny_deltas_is_kept_compactly() -> None:
    """Memory follows the characters, not the fragments: 3-character deltas kept as they
    came would cost ~90 bytes each (the string, its list slot, an int for its arrival time)."""
    n = 200_000
    raw = b'{"type":"response.output_text.delta","delta":"abc"}'
    asm = ResponseAssembler()
    tracemalloc.start()
    try:
        for i in range(n):
            asm(StreamEvent(raw, "response.output_text.delta", None, 1_000_000_000_000 + i))
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < 16 * n  # 3 bytes of text and 8 of arrival time per delta, and change
    assert asm.text == "abc" * n
    assert len(asm.token_times_ns) == n
    assert asm.token_times_ns[-1] == 1_000_000_000_000 + n - 1
