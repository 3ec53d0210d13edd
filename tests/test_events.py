"""StreamEvent and EventDecoder: dialects, laziness, terminal outcomes, usage."""

from __future__ import annotations

import copy
import pickle

import orjson
import pytest

from engine.errors import ErrorEvent, ProtocolError, ResponseFailed
from engine.events import (
    Delta,
    Dialect,
    Ending,
    EventDecoder,
    StreamEvent,
    Usage,
    decode_json,
    events_of,
)
from engine.sse import SSEParser


def decode(raw: bytes) -> tuple[EventDecoder, list[StreamEvent]]:
    decoder = EventDecoder()
    parser = SSEParser()
    return decoder, decoder.decode(parser.feed(raw), 123)


def typed(data: dict[str, object]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def untyped(data: object) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


COMPLETED = {
    "type": "response.completed",
    "sequence_number": 3,
    "response": {
        "id": "resp_1",
        "status": "completed",
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
    },
}
DELTA = {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hi"}
CHAT = {
    "object": "chat.completion.chunk",
    "id": "c1",
    "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
}


def test_responses_stream_is_lazy_until_data_is_read() -> None:
    decoder, events = decode(typed(DELTA) + typed(COMPLETED))
    assert [e.type for e in events] == ["response.output_text.delta", "response.completed"]
    assert all(e.decoded is None for e in events)  # types came from `event:` lines
    assert events[0].received_ns == 123
    assert events[0].text_delta == "Hi"
    assert events[0].sequence_number == 1
    assert decoder.dialect is Dialect.RESPONSES
    assert decoder.terminal is events[1]
    assert decoder.finished
    assert events[1].usage == Usage(5, 2, 7)
    assert events[1].error() is None
    assert events[1].is_terminal


def test_responses_without_event_lines_llama_cpp_style() -> None:
    raw = untyped({k: v for k, v in DELTA.items() if k != "sequence_number"}) + untyped(COMPLETED)
    decoder, events = decode(raw)
    assert [e.type for e in events] == ["response.output_text.delta", "response.completed"]
    assert events[0].sequence_number is None
    assert events[0].text_delta == "Hi"
    assert decoder.dialect is Dialect.RESPONSES


def test_done_ends_without_being_an_event() -> None:
    decoder, events = decode(typed(COMPLETED) + b"data: [DONE]\n\n")
    assert [e.type for e in events] == ["response.completed"]
    assert decoder.done


def test_chat_chunks_and_usage() -> None:
    usage_chunk = {
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    last = {**CHAT, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    decoder, events = decode(
        untyped(CHAT) + untyped(last) + untyped(usage_chunk) + b"data: [DONE]\n\n"
    )
    assert decoder.dialect is Dialect.CHAT
    assert decoder.finish_reason == "length"
    assert [e.text_delta for e in events] == ["Hi", None, None]
    assert events[2].usage == Usage(3, 4, 7)
    assert events[0].usage is None
    assert decoder.done
    assert decoder.terminal is None


def test_chat_choice_other_than_first_is_not_text() -> None:
    chunk = {**CHAT, "choices": [{"index": 1, "delta": {"content": "x"}}]}
    _, events = decode(untyped(chunk))
    assert events[0].text_delta is None


@pytest.mark.parametrize(
    ("raw", "cls", "match"),
    [
        (typed({"type": "error", "code": "server_error", "message": "boom"}), ErrorEvent, "boom"),
        (untyped({"error": {"message": "overloaded", "code": 503}}), ErrorEvent, "overloaded"),
        (
            typed(
                {
                    "type": "response.failed",
                    "response": {
                        "status": "failed",
                        "error": {"code": "server_error", "message": "model crashed"},
                    },
                }
            ),
            ResponseFailed,
            "model crashed",
        ),
        (typed({"type": "response.failed", "response": {}}), ResponseFailed, "no reason given"),
    ],
)
def test_terminal_failures_are_typed(raw: bytes, cls: type[Exception], match: str) -> None:
    decoder, events = decode(raw)
    assert decoder.finished
    error = events[-1].error()
    assert isinstance(error, cls)
    assert match in str(error)


@pytest.mark.parametrize(
    "raw",
    [
        typed(
            {
                "type": "response.incomplete",
                "response": {
                    "status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"},
                },
            }
        ),
        # vLLM reports an incomplete response inside response.completed
        typed(
            {
                "type": "response.completed",
                "response": {
                    "status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"},
                },
            }
        ),
    ],
    ids=["response.incomplete", "completed-with-status-incomplete"],
)
def test_an_incomplete_response_ends_the_stream_without_an_error(raw: bytes) -> None:
    decoder, events = decode(raw)
    assert decoder.finished
    assert events[-1].error() is None
    assert Ending.from_response(events[-1].response) == Ending(
        "incomplete", "max_output_tokens", "length"
    )


@pytest.mark.parametrize(
    ("response", "ending"),
    [
        ({"status": "completed"}, Ending("completed", None, "stop")),
        (
            {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}},
            Ending("incomplete", "content_filter", "content_filter"),
        ),
        (
            {"status": "incomplete", "incomplete_details": "max_output_tokens"},
            Ending("incomplete", "max_output_tokens", "length"),
        ),
        (
            {"status": "incomplete", "incomplete_details": {"reason": "other"}},
            Ending("incomplete", "other", "other"),
        ),
        ({"status": "incomplete", "incomplete_details": None}, Ending("incomplete", None, None)),
        (None, Ending("completed", None, "stop")),
    ],
)
def test_ending_from_a_response(response: dict[str, object] | None, ending: Ending) -> None:
    assert Ending.from_response(response) == ending


@pytest.mark.parametrize(
    ("finish", "ending"),
    [
        ("stop", Ending("completed", None, "stop")),
        ("length", Ending("incomplete", "max_output_tokens", "length")),
        ("content_filter", Ending("incomplete", "content_filter", "content_filter")),
        ("tool_calls", Ending("completed", None, "tool_calls")),
        (None, Ending("completed", None, None)),
    ],
)
def test_ending_from_a_chat_finish_reason(finish: str | None, ending: Ending) -> None:
    assert Ending.from_finish(finish) == ending


def test_stream_errors_carry_the_server_message() -> None:
    _, events = decode(
        untyped({"error": {"message": "overloaded", "code": 503}})
        + typed(
            {
                "type": "response.failed",
                "response": {"status": "failed", "error": {"code": "x", "message": "crashed"}},
            }
        )
    )
    errors = [e.error() for e in events]
    assert [err.server_message if err else None for err in errors] == ["overloaded", "crashed"]
    assert errors[0] is not None
    assert errors[0].code == "503"
    assert errors[0].status is None  # the client sets the HTTP status it got


ODD = [
    # (chat payload, its text_delta, the decoder's finish_reason afterwards)
    pytest.param({**CHAT, "choices": 5}, None, None, id="chat-choices-not-a-list"),
    pytest.param(
        {**CHAT, "choices": [{"index": 0, "delta": "x"}]}, None, None, id="chat-delta-not-an-object"
    ),
    pytest.param(
        {**CHAT, "choices": [{"index": 0, "delta": None, "finish_reason": "stop"}]},
        None,
        "stop",
        id="chat-delta-null",
    ),
]


@pytest.mark.parametrize(("payload", "delta", "finish"), ODD)
def test_odd_chat_shapes_count_as_absent(
    payload: dict[str, object], delta: str | None, finish: str | None
) -> None:
    decoder, events = decode(untyped(payload))
    assert events[0].text_delta == delta
    assert decoder.finish_reason == finish


@pytest.mark.parametrize(
    ("response", "cls", "text"),
    [
        ({"status": "failed", "error": "boom"}, ResponseFailed, "response failed: boom"),
        ({"status": "failed", "error": None}, ResponseFailed, "no reason given"),
    ],
)
def test_odd_failure_shapes_still_give_the_typed_error(
    response: dict[str, object], cls: type[Exception], text: str
) -> None:
    _, events = decode(typed({"type": "response.completed", "response": response}))
    error = events[0].error()
    assert isinstance(error, cls)
    assert text in str(error)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"input_tokens": "5", "output_tokens": True}, Usage(0, 0, 0)),
        ({"input_tokens": 2.0, "output_tokens": float("inf"), "total_tokens": -1}, Usage(2, 0, 2)),
        ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 9}, Usage(3, 4, 9)),
    ],
)
def test_usage_counts_that_are_not_whole_numbers_count_zero(
    usage: dict[str, object], expected: Usage
) -> None:
    assert Usage.from_payload(usage) == expected


def test_non_terminal_event_has_no_error() -> None:

    _, events = decode(typed(DELTA))
    assert events[0].error() is None
    assert events[0].response is None
    assert events[0].usage is None


def test_malformed_json_is_a_protocol_error_with_snippet() -> None:
    _, events = decode(b'event: response.output_text.delta\ndata: {"delta": "a\n\n')
    with pytest.raises(ProtocolError, match="not valid JSON"):
        _ = events[0].text_delta
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode(b"data: {oops\n\n")


def test_non_object_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not a JSON object"):
        decode(b"data: [1, 2]\n\n")
    _, events = decode(b"event: x\ndata: 3\n\n")
    with pytest.raises(ProtocolError, match="not a JSON object"):
        _ = events[0].data


def test_untyped_unknown_object_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="neither a type"):
        decode(untyped({"hello": 1}))


def test_invalid_utf8_decodes_with_replacement() -> None:
    assert decode_json(b'{"delta": "a\xffb"}') == {"delta": "a\ufffdb"}


def test_usage_from_payload() -> None:
    assert Usage.from_payload(None) is None
    assert Usage.from_payload({"input_tokens": 2, "output_tokens": 3}) == Usage(2, 3, 5)
    assert Usage(1, 2, 3, 1, 2).as_dict() == {
        "input_tokens": 1,
        "input_tokens_details": {"cached_tokens": 1},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 3,
    }
    assert Usage(1, 2, 3, 1, 2).as_chat() == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 1},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }


@pytest.mark.parametrize(
    "payload",
    [
        {
            "input_tokens": 10,
            "output_tokens": 20,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens_details": {"reasoning_tokens": 12},
        },
        {
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 0},
        },
    ],
    ids=["responses", "chat"],
)
def test_usage_details_of_both_apis(payload: dict[str, object]) -> None:
    assert Usage.from_payload(payload) == Usage(10, 20, 30, 4, 12)


def test_usage_details_of_odd_shapes_count_zero() -> None:
    assert Usage.from_payload(
        {
            "prompt_tokens": 1,
            "prompt_tokens_details": None,
            "completion_tokens_details": {"reasoning_tokens": "x"},
        }
    ) == Usage(1, 0, 1)


def test_as_dict_for_writers() -> None:
    _, events = decode(typed(DELTA))
    assert events[0].as_dict() == {"type": DELTA["type"], "received_ns": 123, "data": DELTA}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"type":"response.output_text.delta","delta":"plain"}', "plain"),
        (b'{"type":"response.output_text.delta","delta":"say \\"hi\\"\\n"}', 'say "hi"\n'),
        (b'{"type":"response.output_text.delta","delta":"caf\xc3\xa9"}', "caf\u00e9"),
        (b'{"type":"response.output_text.delta","delta":"bad \xff"}', "bad \ufffd"),
        (b'{"type":"response.output_text.delta", "delta": "spaced"}', "spaced"),
        (b'{"type":"response.output_text.delta","delta":""}', ""),
        (b'{"type":"response.output_text.delta","item_id":"delta","delta":"x"}', "x"),
        (b'{"type":"response.output_text.delta","delta":5}', None),
    ],
)
def test_text_delta_fast_path_is_exact(raw: bytes, expected: str | None) -> None:
    _, events = decode(b"event: response.output_text.delta\ndata: " + raw + b"\n\n")
    assert events[0].text_delta == expected
    assert events[0].text_delta == expected  # cached
    assert events[0].text_delta == (decode_json(raw)["delta"] if expected is not None else None)


def test_truncated_delta_json_is_not_accepted_by_the_fast_path() -> None:
    _, events = decode(
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","delta":"a"\n\n'
    )
    with pytest.raises(ProtocolError, match="not valid JSON"):
        _ = events[0].text_delta


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"type":"response.output_text.delta","delta":"x",}', id="trailing-comma"),
        pytest.param(b'{"type":"response.output_text.delta","delta":"x" "y"}', id="garbage-member"),
        pytest.param(
            b'{"type":"response.output_text.delta","delta":"a\tb"}', id="raw-control-char"
        ),
        pytest.param(
            b'{"type":"response.output_text.delta","delta":"x","n":01}', id="leading-zero"
        ),
        pytest.param(b'{"type":"response.output_text.delta",,"delta":"x"}', id="double-comma"),
        pytest.param(b'{"type":"response.output_text.delta","delta":"x"}}', id="extra-brace"),
    ],
)
def test_broken_delta_json_is_always_a_protocol_error(raw: bytes) -> None:
    # The text of a delta must never come from bytes a JSON decoder rejects: a corrupt
    # stream would otherwise end in silent success with made-up text.
    _, events = decode(b"event: response.output_text.delta\ndata: " + raw + b"\n\n")
    with pytest.raises(ProtocolError, match="not valid JSON"):
        _ = events[0].text_delta
    with pytest.raises(ProtocolError, match="not valid JSON"):
        _ = events[0].data


def test_duplicate_delta_key_takes_the_last_like_a_json_decoder() -> None:
    raw = b'{"type":"response.output_text.delta","delta":"first","delta":"last"}'
    _, events = decode(b"event: response.output_text.delta\ndata: " + raw + b"\n\n")
    assert events[0].text_delta == "last" == decode_json(raw)["delta"]


def test_delta_fast_path_does_not_keep_the_decoded_object() -> None:
    _, events = decode(typed(DELTA))
    assert events[0].text_delta == "Hi"
    assert events[0].decoded is None  # freed at once: nothing for the garbage collector
    assert events[0].data == DELTA  # decoded again on demand
    assert events[0].text_delta == "Hi"  # cached


def test_scan_leaves_plain_events_as_bytes_and_strings() -> None:
    """Events waiting in the queue must not be objects the cyclic GC counts and traverses."""
    completed = {"type": "response.completed", "response": {"status": "completed"}}
    stream = typed({"type": "response.created", "response": {}}) + typed(DELTA) * 3
    decoder = EventDecoder()
    parser = decoder.parser()
    first = decoder.scan(parser.feed(stream), 5)
    assert decoder.dialect is Dialect.RESPONSES
    items = decoder.scan(parser.feed(typed(DELTA) * 2 + typed(completed) + b"data: [DONE]\n\n"), 7)
    assert len(first) == 4 * 3
    assert len(items) == 3 * 3  # [DONE] is not an event
    assert {type(x) for x in first + items[:6]} == {bytes, str, type(None)}
    assert first[1::3] == ["response.created", *[DELTA["type"]] * 3]
    assert items[6:] == [decoder.terminal, None, None]  # built: the reader read it
    assert decoder.terminal.received_ns == 7
    assert decoder.done
    assert decoder.finished
    events = list(events_of(first, 5))  # the consumer builds them as it takes them, stamped
    assert [e.text_delta for e in events] == [None, "Hi", "Hi", "Hi"]
    assert {e.received_ns for e in events} == {5}


def test_typed_delta_that_is_not_an_object_is_a_protocol_error() -> None:
    _, events = decode(b"event: response.output_text.delta\ndata: [1]\n\n")
    for _ in range(2):  # and stays one: the non-object is not cached as the event's data
        with pytest.raises(ProtocolError, match="not a JSON object"):
            _ = events[0].text_delta
        with pytest.raises(ProtocolError, match="not a JSON object"):
            _ = events[0].data


def test_decoder_accepts_plain_sse_messages_and_repr() -> None:
    decoder = EventDecoder()
    (event,) = decoder.decode(SSEParser().feed(typed(DELTA)), 9)
    assert isinstance(event, StreamEvent)
    assert event.received_ns == 9
    assert repr(event).startswith("<StreamEvent response.output_text.delta at 9 ns: b'{")
    assert decoder.parser().feed(typed(DELTA)) == [orjson.dumps(DELTA), DELTA["type"], None]


def test_untyped_then_typed_events_in_one_chunk_keep_their_order_and_dialect() -> None:
    """A gateway that omits `event:` on some events: the untyped one is read, the rest pass."""
    decoder = EventDecoder()
    created = {"type": "response.created", "response": {}}
    items = decoder.scan(decoder.parser().feed(untyped(created) + typed(DELTA)), 3)
    assert isinstance(items[0], StreamEvent)
    assert items[0].type == "response.created"
    assert items[1:] == [None, None, orjson.dumps(DELTA), DELTA["type"], None]
    assert decoder.dialect is Dialect.RESPONSES
    events = list(events_of(items, 3))
    assert [e.text_delta for e in events] == [None, "Hi"]


def test_decode_takes_events_and_a_scanned_batch_takes_another_scan() -> None:
    decoder = EventDecoder()
    events = decoder.decode(SSEParser().feed(typed(DELTA) + typed(COMPLETED)), 5)
    again = EventDecoder().decode(events, 6)
    assert [(e.type, e.raw, e.received_ns) for e in again] == [(e.type, e.raw, 6) for e in events]
    chat = EventDecoder()
    items = chat.scan(chat.parser().feed(untyped(CHAT) + untyped(CHAT)), 7)
    assert isinstance(items[0], StreamEvent)  # untyped: built by the reader
    fresh = EventDecoder()
    assert fresh.scan(items, 7) == items  # built events pass through, typed by their JSON
    assert fresh.dialect is Dialect.CHAT
    created = {"type": "response.created", "response": {}}
    flat = decoder.scan(decoder.parser().feed(untyped(created) + typed(DELTA)), 8)
    plain = EventDecoder()
    assert plain.scan(flat[3:], 8) == flat[3:]
    assert plain.dialect is Dialect.RESPONSES


COMPLETION = {
    "object": "text_completion",
    "id": "cmpl-1",
    "choices": [{"index": 0, "text": "Once", "finish_reason": None}],
}


def test_a_legacy_completion_chunk_is_text() -> None:
    decoder, events = decode(untyped(COMPLETION))
    assert decoder.dialect is Dialect.COMPLETIONS
    assert events[0].type == "text_completion"
    assert events[0].text_delta == "Once"
    assert events[0].deltas == (Delta("text", "Once"),)
    assert events[0].has_token


def test_a_responses_text_delta_has_a_token_only_when_not_empty() -> None:
    _, events = decode(
        typed({"type": "response.output_text.delta", "delta": ""})
        + typed({"type": "response.output_text.delta", "delta": "a"})
    )
    assert [e.has_token for e in events] == [False, True]


@pytest.mark.parametrize(
    "choices",
    [
        [5, {"index": 0, "delta": "x"}],
        [{"index": 0, "delta": {"tool_calls": [7, {"index": 0, "function": "f"}]}}],
        [{"index": "0", "text": ""}],
    ],
    ids=["not-dicts", "odd-tool-calls", "empty-completion-text"],
)
def test_odd_choice_shapes_give_no_deltas(choices: list[object]) -> None:
    for kind in ("chat.completion.chunk", "text_completion"):
        _, events = decode(untyped({"object": kind, "choices": choices}))
        assert all(not d.text and d.name is None for d in events[0].deltas)
        assert not events[0].has_token


# --- every kind of output is a token ------------------------------------------------------


def chat_delta(delta: dict[str, object], **choice: object) -> bytes:
    return untyped({**CHAT, "choices": [{"index": 0, "delta": delta, **choice}]})


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        pytest.param(
            {"function_call": {"name": "f", "arguments": ""}},
            [("tool_call", "", None, "f", "function_call")],
            id="legacy-function-call-name",
        ),
        pytest.param(
            {"function_call": {"arguments": '{"a"'}},
            [("tool_call", '{"a"', None, None, "function_call")],
            id="legacy-function-call-arguments",
        ),
        pytest.param(
            {"tool_calls": [{"index": 0, "id": "c", "type": "custom", "custom": {"name": "sql"}}]},
            [("tool_call", "", 0, "sql", "custom")],
            id="custom-tool-call",
        ),
        pytest.param(
            {"tool_calls": [{"custom": {"input": "SELECT"}}]},
            [("tool_call", "SELECT", None, None, "custom")],
            id="custom-without-type-or-index",
        ),
        pytest.param(
            {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
            [("tool_call", "{}", None, "f", "function")],
            id="function-without-index",
        ),
        pytest.param(
            {"audio": {"id": "au_1", "data": "AAA=", "transcript": "Hi"}},
            [("audio", "AAA=", None, None, None), ("audio_transcript", "Hi", None, None, None)],
            id="audio",
        ),
        pytest.param(
            {"reasoning": "a", "reasoning_content": "a"},
            [("reasoning", "a", None, None, None)],
            id="both-reasoning-names-one-token",
        ),
        pytest.param(
            {"reasoning_details": [{"type": "reasoning.text", "text": "x", "index": 0}, 5]},
            [("reasoning", "x", None, None, None)],
            id="openrouter-reasoning-details",
        ),
        pytest.param(
            {"reasoning_details": [{"type": "reasoning.encrypted", "data": "..."}]},
            [],
            id="encrypted-reasoning-is-no-token",
        ),
    ],
)
def test_every_kind_of_chat_output_is_a_token(
    delta: dict[str, object], expected: list[tuple[object, ...]]
) -> None:
    _, events = decode(chat_delta(delta))
    got = [(d.kind, d.text, d.call_index, d.name, d.call_type) for d in events[0].deltas]
    assert got == expected
    assert events[0].has_token is bool(expected)


@pytest.mark.parametrize(
    ("event", "kind", "call_type", "part"),
    [
        ("response.custom_tool_call_input.delta", "tool_call", "custom_tool_call", 0),
        ("response.mcp_call_arguments.delta", "tool_call", "mcp_call", 0),
        ("response.code_interpreter_call_code.delta", "tool_call", "code_interpreter_call", 0),
        ("response.shell_call_command.delta", "tool_call", "shell_call", 2),
        ("response.audio.delta", "audio", None, 0),
        ("response.audio.transcript.delta", "audio_transcript", None, 0),
        ("response.reasoning_summary_text.delta", "reasoning_summary", None, 1),
    ],
)
def test_every_kind_of_responses_output_is_a_token(
    event: str, kind: str, call_type: str | None, part: int
) -> None:
    data: dict[str, object] = {"type": event, "output_index": 3, "item_id": "it", "delta": "x"}
    data["command_index" if "shell" in event else "summary_index"] = part
    _, events = decode(typed(data))
    assert events[0].deltas == (Delta(kind, "x", 3, item_id="it", part=part, call_type=call_type),)
    assert events[0].has_token


def test_a_shell_command_that_arrives_whole_is_a_token() -> None:
    added = {"type": "response.shell_call_command.added", "output_index": 1, "command": "ls"}
    _, events = decode(typed(added))
    assert [(d.text, d.call_type) for d in events[0].deltas] == [("ls", "shell_call")]


ITEM_DONE = {
    "type": "response.output_item.done",
    "output_index": 0,
    "item": {
        "id": "msg_1",
        "type": "message",
        "content": [
            {"type": "output_text", "text": "See example."},
            {"type": "refusal", "refusal": ""},
            "odd",
        ],
    },
}


def test_an_item_that_arrives_whole_is_the_first_token() -> None:
    """created -> output_item.done(message) -> completed: no delta, yet text and a token."""
    created = {"type": "response.created", "response": {"id": "r"}}
    decoder, events = decode(typed(created) + typed(ITEM_DONE) + typed(COMPLETED))
    done = events[1]
    assert done.deltas == (Delta("text", "See example.", 0, item_id="msg_1"),)
    assert done.has_token
    assert done.text_delta == "See example."
    assert decoder.fragment_seen
    assert events[2].deltas == ()  # the terminal repeats what was seen: no second token
    assert events[2].text_delta is None


def test_items_after_a_delta_are_not_tokens_again() -> None:
    decoder, events = decode(typed(DELTA) + typed(ITEM_DONE))
    assert decoder.fragment_seen
    assert events[1].decoded is None  # passed without a look
    assert events[1].deltas == ()


def test_an_untyped_delta_counts_as_the_first_fragment() -> None:
    decoder, events = decode(untyped(DELTA) + typed(ITEM_DONE))
    assert decoder.fragment_seen
    assert not events[1].has_token


def test_a_terminal_with_whole_items_is_the_first_token() -> None:
    output = [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "S"}], "content": []},
        {"type": "web_search_call", "id": "ws_1", "action": {"type": "search", "query": "q"}},
        {"type": "custom_tool_call", "call_id": "c", "name": "sql", "input": "SELECT 1"},
    ]
    completed = {
        "type": "response.completed",
        "response": {"status": "completed", "output": output},
    }
    _, events = decode(typed(completed))
    assert [(d.kind, d.text, d.index, d.call_type) for d in events[0].deltas] == [
        ("reasoning_summary", "S", 0, None),
        ("tool_call", '{"type":"search","query":"q"}', 1, "web_search_call"),
        ("tool_call", "SELECT 1", 2, "custom_tool_call"),
    ]
    assert events[0].text_delta is None  # no visible text among them


@pytest.mark.parametrize(
    "item",
    [None, {"type": "reasoning", "summary": [], "content": []}, {"type": "x_call"}],
    ids=["not-an-object", "encrypted-reasoning", "call-without-input"],
)
def test_an_item_without_output_is_no_token(item: object) -> None:
    decoder, events = decode(typed({**ITEM_DONE, "item": item}))
    assert not events[0].has_token
    assert not decoder.fragment_seen


def test_a_chat_chunk_with_an_error_ends_the_stream_as_an_error() -> None:
    """OpenRouter: an `error` inside a chunk, `finish_reason: "error"`, then [DONE]."""
    error_chunk = {
        **CHAT,
        "error": {"code": 502, "message": "Provider disconnected"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    decoder, events = decode(untyped(CHAT) + untyped(error_chunk) + untyped(error_chunk))
    assert decoder.terminal is events[1]  # the first
    assert decoder.finished
    assert decoder.finish_reason is None  # not a way to finish
    error = events[1].error()
    assert isinstance(error, ErrorEvent)
    assert (error.server_message, error.code) == ("Provider disconnected", "502")


def test_a_chat_chunk_with_a_null_error_is_no_error() -> None:
    decoder, events = decode(untyped({**CHAT, "error": None}))
    assert decoder.terminal is None
    assert events[0].error() is None


def test_a_fragment_event_without_its_text_has_no_deltas() -> None:
    _, events = decode(typed({"type": "response.refusal.delta", "delta": None}))
    assert events[0].deltas == ()
    assert not events[0].has_token


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ({"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f"}, True),
        ({"type": "custom_tool_call", "id": "ctc_1", "call_id": "c", "name": "sql"}, True),
        ({"type": "web_search_call", "id": "ws_1"}, False),
        ({"type": "message", "id": "msg_1", "name": "x"}, False),
        ("odd", False),
    ],
)
def test_a_call_announced_with_its_name_is_a_token(item: object, named: bool) -> None:
    """As chat's opening chunk of a call: the model wrote the name."""
    added = {"type": "response.output_item.added", "output_index": 2, "item": item}
    _, events = decode(typed(added))
    assert events[0].has_token is named
    if named:
        assert isinstance(item, dict)
        (d,) = events[0].deltas
        assert (d.kind, d.text, d.index, d.name, d.call_type) == (
            "tool_call",
            "",
            2,
            item["name"],
            item["type"],
        )


def test_first_token_builds_events_up_to_the_first_token_and_leaves_them_in_the_chunk() -> None:
    decoder = EventDecoder()
    created = {"type": "response.created", "response": {"id": "r"}}
    empty = {**DELTA, "delta": ""}
    items = decoder.scan(decoder.parser().feed(typed(created) + typed(empty) + typed(DELTA)), 4)
    assert not decoder.first_token(items[:6], 4)  # no token in the first two events
    assert decoder.first_token(items, 4)
    built = [item for item in items[::3] if isinstance(item, StreamEvent)]
    assert [e.type for e in built] == [created["type"], DELTA["type"], DELTA["type"]]
    assert [e.text_delta for e in events_of(items, 4)][1:] == ["", "Hi"]


def test_events_and_values_pickle_and_copy_whole() -> None:
    event = StreamEvent(typed(DELTA).split(b"data: ")[1].strip(), DELTA["type"], "7", 9)
    assert event.text_delta == "Hi"
    _ = event.data
    for copied in (pickle.loads(pickle.dumps(event)), copy.deepcopy(event)):  # noqa: S301
        assert (copied.raw, copied.type, copied.id, copied.received_ns) == (
            event.raw,
            DELTA["type"],
            "7",
            9,
        )
        assert copied.decoded == event.decoded
        assert copied.cached_delta == "Hi"
    for value in (Delta("text", "a", 2, part=1), Ending("incomplete", "content_filter")):
        assert pickle.loads(pickle.dumps(value)) == value == copy.copy(value)  # noqa: S301
