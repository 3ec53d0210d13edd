"""Built-in handlers on decoded events: assembly in both shapes, timing, writers, callbacks."""

from __future__ import annotations

import io

import orjson
import pytest

from engine.events import Dialect, Ending, EventDecoder, StreamEvent, Usage
from engine.handlers import (
    Callback,
    JSONLWriter,
    ResponseAssembler,
    TextCollector,
    TimingRecorder,
    split_handlers,
)
from engine.sse import SSEParser


def events_of(*payloads: dict[str, object], typed: bool = True) -> list[StreamEvent]:
    decoder = EventDecoder()
    out: list[StreamEvent] = []
    for t, payload in enumerate(payloads):
        head = f"event: {payload['type']}\n".encode() if typed and "type" in payload else b""
        raw = head + b"data: " + orjson.dumps(payload) + b"\n\n"
        out += decoder.decode(SSEParser().feed(raw), 1000 * (t + 1))
    return out


CREATED = {
    "type": "response.created",
    "response": {"id": "resp_9", "object": "response", "model": "m", "status": "in_progress"},
}
DELTAS = [{"type": "response.output_text.delta", "delta": d} for d in ("He", "llo")]
COMPLETED = {
    "type": "response.completed",
    "response": {
        "id": "resp_9",
        "object": "response",
        "status": "completed",
        "output": [],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    },
}
CHAT = [
    {
        "object": "chat.completion.chunk",
        "id": "c1",
        "model": "m",
        "created": 7,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
    },
    {
        "object": "chat.completion.chunk",
        "id": "c1",
        "model": "m",
        "created": 7,
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    },
    {
        "object": "chat.completion.chunk",
        "id": "c1",
        "model": "m",
        "created": 7,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
    },
    {
        "object": "chat.completion.chunk",
        "id": "c1",
        "model": "m",
        "created": 7,
        "choices": [],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
    },
]


def test_assembler_takes_the_terminal_response() -> None:
    asm = ResponseAssembler()
    for ev in events_of(CREATED, *DELTAS, COMPLETED):
        asm(ev)
    assert asm.text == "Hello"
    assert asm.response() == COMPLETED["response"]
    assert asm.usage is not None
    assert asm.usage.total_tokens == 5
    assert list(asm.token_times_ns) == [2000, 3000]
    assert asm.dialect is Dialect.RESPONSES


def test_assembler_add_chunk_equals_calling_it_per_event() -> None:
    """The flat-batch path of `Engine.run` without handlers: same text, times, response."""
    empty = {"type": "response.output_text.delta", "delta": ""}
    payloads = [CREATED, DELTAS[0], empty, DELTAS[1], COMPLETED]
    raw = b"".join(
        f"event: {p['type']}\n".encode() + b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads
    )
    per_event, batched = ResponseAssembler(), ResponseAssembler()
    for ev in EventDecoder().decode(SSEParser().feed(raw), 7):
        per_event(ev)
    decoder = EventDecoder()
    batched.add_chunk(decoder.scan(decoder.parser().feed(raw), 7), 7)
    for asm in (per_event, batched):
        assert asm.text == "Hello"
        assert list(asm.token_times_ns) == [7, 7]
        assert asm.response() == COMPLETED["response"]
        assert asm.dialect is Dialect.RESPONSES  # the empty delta went the per-event way


def test_assembler_builds_a_response_when_the_server_sent_none() -> None:
    asm = ResponseAssembler()
    for ev in events_of(CREATED, *DELTAS):
        asm(ev)
    response = asm.response()
    assert response["id"] == "resp_9"
    assert response["status"] == "in_progress"  # what the server last said (no terminal)
    assert response["incomplete_details"] is None
    assert response["output"][0]["content"][0]["text"] == "Hello"
    assert response["usage"] is None


def test_assembler_chat_chunks_into_a_responses_object() -> None:
    asm = ResponseAssembler(Dialect.RESPONSES)
    for ev in events_of(*CHAT, typed=False):
        asm(ev)
    response = asm.response()
    assert response["object"] == "response"
    assert response["id"] == "c1"
    assert response["output"][0]["content"][0]["text"] == "Hi"
    assert response["usage"] == Usage(4, 1, 5).as_dict()


def test_assembler_chat_completion_shape() -> None:
    asm = ResponseAssembler(Dialect.CHAT)
    for ev in events_of(*CHAT, typed=False):
        asm(ev)
    completion = asm.response()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hi",
        "refusal": None,
    }
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"] == CHAT[3]["usage"]  # as sent: no details invented


def test_assembler_tolerates_odd_chat_shapes() -> None:
    # A server's `choices` that is not a list carries no text and no finish reason.
    odd = [{**CHAT[1], "choices": 5}, {**CHAT[1], "choices": {"index": 0}}, CHAT[1]]
    asm = ResponseAssembler(Dialect.CHAT)
    for ev in events_of(*odd, typed=False):
        asm(ev)
    completion = asm.response()
    assert completion["choices"][0]["message"]["content"] == "Hi"
    assert completion["choices"][0]["finish_reason"] is None  # none was seen (as the SDK)


def test_assembler_responses_stream_into_chat_completion_shape() -> None:

    asm = ResponseAssembler(Dialect.CHAT)
    for ev in events_of(CREATED, *DELTAS, COMPLETED):
        asm(ev)
    completion = asm.response()
    assert completion["id"] == "resp_9"
    assert completion["choices"][0]["message"]["content"] == "Hello"
    assert completion["usage"]["completion_tokens"] == 2


def test_timing_recorder_and_text_collector() -> None:
    timing = TimingRecorder()
    text = TextCollector()
    for ev in events_of(CREATED, *DELTAS, COMPLETED):
        timing(ev)
        text(ev)
    assert timing.first_token_ns == 2000
    assert timing.itl_ns() == [1000]
    assert text.text == "Hello"
    assert TimingRecorder().first_token_ns is None


def test_jsonl_writer_and_callback_filter() -> None:
    buf = io.BytesIO()
    writer = JSONLWriter(buf)
    seen: list[str] = []
    cb = Callback(lambda ev: seen.append(ev.type), types={"response.completed"})
    for ev in events_of(CREATED, COMPLETED):
        writer(ev)
        cb(ev)
    rows = [orjson.loads(line) for line in buf.getvalue().splitlines()]
    assert [r["type"] for r in rows] == ["response.created", "response.completed"]
    assert rows[1]["data"] == COMPLETED
    assert seen == ["response.completed"]


def test_split_handlers_decides_once() -> None:
    async def coro_fn(ev: StreamEvent) -> None:
        return None

    class AsyncCallable:
        async def __call__(self, ev: StreamEvent) -> None:
            return None

    sync_cb = Callback(print)
    async_cb = Callback(coro_fn)
    collector = TextCollector()
    acall = AsyncCallable()
    sync, run_async = split_handlers([collector, coro_fn, sync_cb, async_cb, acall])
    assert sync == [collector, sync_cb]
    assert run_async == [coro_fn, async_cb, acall]


@pytest.mark.parametrize("shape", [Dialect.CHAT, Dialect.RESPONSES])
def test_a_finish_reason_beside_the_last_token_is_kept(shape: Dialect) -> None:
    """vLLM ends a capped chat stream with finish_reason on the chunk of its last token."""
    last = {
        "object": "chat.completion.chunk",
        "id": "c1",
        "model": "m",
        "created": 7,
        "choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "length"}],
    }
    asm = ResponseAssembler(shape)
    for ev in events_of(CHAT[0], CHAT[1], last, CHAT[3], typed=False):
        asm(ev)
    assert asm.text == "Hi there"
    assert asm.ending == Ending("incomplete", "max_output_tokens", "length")
    response = asm.response()
    if shape is Dialect.CHAT:
        assert response["choices"][0]["finish_reason"] == "length"
    else:
        assert response["status"] == "incomplete"
        assert response["incomplete_details"] == {"reason": "max_output_tokens"}
