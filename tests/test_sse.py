"""SSEParser: spec examples, edge cases fed three ways, and properties against a reference."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ProtocolError
from engine.sse import MAX_RETRY_MS, FlatSSEParser, SSEMessage, SSEParser

Msg = tuple[str, str, str | None]  # (event, data, id)


def as_tuples(messages: list[SSEMessage]) -> list[Msg]:
    return [(m.event, m.data, m.id) for m in messages]


def parse_whole(raw: bytes) -> list[Msg]:
    parser = SSEParser()
    return as_tuples(parser.feed(raw) + parser.close())


def parse_chunks(chunks: list[bytes]) -> list[Msg]:
    parser = SSEParser()
    out: list[SSEMessage] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return as_tuples(out + parser.close())


def feed_three_ways(raw: bytes) -> list[Msg]:
    """Whole, byte at a time with empty chunks between, and with trailing garbage that never
    completes a line (h11's `tr`): all three must agree, and the result is returned."""
    whole = parse_whole(raw)
    bytewise = parse_chunks([b for i in range(len(raw)) for b in (raw[i : i + 1], b"")])
    trailing = parse_chunks([raw, b"data: never dispatched"])
    assert bytewise == whole
    assert trailing == whole
    return whole


def reference_parse(raw: bytes) -> list[Msg]:
    """A slow, literal transcription of the WHATWG algorithm, used as the oracle."""
    text = raw.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    lines: list[str] = []
    current: list[str] = []
    complete = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "\r\n":
            lines.append("".join(current))
            current = []
            if ch == "\r" and i + 1 < len(text) and text[i + 1] == "\n":
                i += 1
            complete = True
        else:
            current.append(ch)
            complete = False
        i += 1
    del complete  # an unterminated last line is never processed
    out: list[Msg] = []
    data, event, last_id = "", "", None
    for line in lines:
        if line == "":
            if data:
                out.append((event or "message", data.removesuffix("\n"), last_id))
            data, event = "", ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            value = value.removeprefix(" ")
        else:
            name, value = line, ""
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "error" and ":" in line:  # the one addition to the spec (llama.cpp)
            out.append(("error", value, last_id))
    return out


CASES = [
    pytest.param(b"data: hello\n\n", [("message", "hello", None)], id="simple"),
    pytest.param(
        b'data: {"a":1}\n\nerror: {"message":"boom"}\n\ndata: [DONE]\n\n',
        [
            ("message", '{"a":1}', None),
            ("error", '{"message":"boom"}', None),
            ("message", "[DONE]", None),
        ],
        id="llama-cpp-error-line",
    ),
    pytest.param(
        b"error:x\ndata: y\n\n",
        [("error", "x", None), ("message", "y", None)],
        id="error-line-dispatched-at-once",
    ),
    pytest.param(b"errors: x\nerror\n\n", [], id="only-the-error-field"),
    pytest.param(b"data: a\r\n\r\n", [("message", "a", None)], id="crlf"),
    pytest.param(
        b"data: a\r\rdata: b\r\r", [("message", "a", None), ("message", "b", None)], id="lone-cr"
    ),
    pytest.param(
        b"data: a\n\rdata: b\r\n\n",
        [("message", "a", None), ("message", "b", None)],
        id="mixed-endings",
    ),
    pytest.param(b"\xef\xbb\xbfdata: x\n\n", [("message", "x", None)], id="bom-at-start"),
    pytest.param(
        b"data: x\n\n\xef\xbb\xbfdata: y\n\n",
        [("message", "x", None)],
        id="bom-later-is-a-field-name",
    ),
    pytest.param(b": keep-alive\n\ndata: x\n\n", [("message", "x", None)], id="comment"),
    pytest.param(b"data\n\n", [("message", "", None)], id="data-without-colon"),
    pytest.param(b"data:\n\n", [("message", "", None)], id="data-empty-value"),
    pytest.param(b"data:  two\n\n", [("message", " two", None)], id="only-one-space-stripped"),
    pytest.param(b"data:x\n\n", [("message", "x", None)], id="no-space"),
    pytest.param(b"data: a\ndata: b\n\n", [("message", "a\nb", None)], id="multi-line-data"),
    pytest.param(b"data: a\ndata\n\n", [("message", "a\n", None)], id="trailing-empty-data-line"),
    pytest.param(
        b"event: ping\n\ndata: x\n\n", [("message", "x", None)], id="no-data-block-resets-event"
    ),
    pytest.param(
        b"event: add\ndata: 1\n\nevent:\ndata: 2\n\n",
        [("add", "1", None), ("message", "2", None)],
        id="empty-event-is-message",
    ),
    pytest.param(
        b"id: 7\ndata: a\n\ndata: b\n\n",
        [("message", "a", "7"), ("message", "b", "7")],
        id="id-persists",
    ),
    pytest.param(
        b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n",
        [("message", "a", "1"), ("message", "b", "1")],
        id="id-with-nul-ignored",
    ),
    pytest.param(
        b"id: 1\ndata: a\n\nid\ndata: b\n\n",
        [("message", "a", "1"), ("message", "b", "")],
        id="id-reset-to-empty",
    ),
    pytest.param(b"id: 9\n\ndata: a\n\n", [("message", "a", "9")], id="id-without-data"),
    pytest.param(
        b"data: a\n\ndata: unfinished\n", [("message", "a", None)], id="unfinished-event-discarded"
    ),
    pytest.param(
        b"data: \xff\xfe ok\n\n", [("message", "\ufffd\ufffd ok", None)], id="invalid-utf8"
    ),
    pytest.param(b"foo: bar\ndata: x\n\n", [("message", "x", None)], id="unknown-field-ignored"),
    pytest.param(b"DATA: x\n\n", [], id="field-names-case-sensitive"),
    pytest.param(b"data: x\n\n\n\n", [("message", "x", None)], id="extra-blank-lines"),
    pytest.param(
        b'event: response.output_text.delta\ndata: {"delta":"hi"}\n\n',
        [("response.output_text.delta", '{"delta":"hi"}', None)],
        id="responses-event",
    ),
    pytest.param(b"data: [DONE]\n\n", [("message", "[DONE]", None)], id="done-is-data"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_cases_fed_three_ways(raw: bytes, expected: list[Msg]) -> None:
    assert feed_three_ways(raw) == expected
    assert reference_parse(raw) == expected


def test_spec_example_stock_ticker() -> None:
    raw = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert feed_three_ways(raw) == [("message", "YHOO\n+2\n10", None)]


def test_spec_example_comment_and_ids() -> None:
    raw = (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    assert feed_three_ways(raw) == [
        ("message", "first event", "1"),
        ("message", "second event", ""),
        ("message", " third event", ""),
    ]


def test_spec_example_two_events_one_unfinished() -> None:
    assert feed_three_ways(b"data\n\ndata\ndata\n\ndata:") == [
        ("message", "", None),
        ("message", "\n", None),
    ]


def test_cr_at_chunk_end_then_lf_after_empty_chunks() -> None:
    chunks = [b"data: a\r", b"", b"", b"\n", b"\r", b"", b"\ndata: b\r\n\r\n"]
    assert parse_chunks(chunks) == [("message", "a", None), ("message", "b", None)]


def test_every_split_point_with_empty_chunks() -> None:
    raw = b"\xef\xbb\xbfevent: e\r\nid: 3\r\ndata: x\r\n: c\r\n\r\nretry: 5\ndata: y\rdata: z\n\n"
    expected = parse_whole(raw)
    assert len(expected) == 2
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert parse_chunks([raw[:i], b"", raw[i:j], b"", raw[j:]]) == expected


def test_pure_crlf_chunks_at_every_split_point_match_the_reference() -> None:
    """The CRLF fast path (split on CRLF) and its fall-backs (a CR ending a chunk, a lone LF)."""
    raw = b"event: a\r\ndata: 1\r\ndata: 2\r\nid: 7\r\n\r\n: c\r\ndata: 3\r\n\r\ndata: 4\n\n"
    expected = reference_parse(raw)
    assert [m[1] for m in expected] == ["1\n2", "3", "4"]
    for i in range(len(raw) + 1):
        assert parse_chunks([raw[:i], raw[i:]]) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"retry: 3000\n", 3000),
        (b"retry: 30x\n", None),
        (b"retry:\n", None),
        (b"retry: -5\n", None),
        (b"retry: \xd9\xa3\n", None),
        (b"retry:10\nretry: 20\n", 20),
    ],
)
def test_retry_digits_only(value: bytes, expected: int | None) -> None:
    parser = SSEParser()
    parser.feed(value)
    assert parser.retry == expected


def test_retry_longer_than_the_int_string_limit_is_ignored() -> None:
    # int() of more than 4300 digits raises ValueError: the parser must ignore the value
    # (it cannot be a meant delay) and raise nothing, fed whole or byte by byte.
    huge = b"retry: " + b"9" * 5000 + b"\n"
    bytewise = [huge[i : i + 1] for i in range(len(huge))]
    for chunks in ([b"retry: 7\n" + huge], [b"retry: 7\n", *bytewise]):
        parser = SSEParser()
        for chunk in chunks:
            assert parser.feed(chunk) == []
        assert parser.retry == 7  # the last *valid* value stays in effect


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(str(MAX_RETRY_MS).encode(), MAX_RETRY_MS, id="int64-max-kept"),
        pytest.param(str(MAX_RETRY_MS + 1).encode(), None, id="beyond-int64-ignored"),
        pytest.param(b"0" * 5000 + b"5", 5, id="leading-zeros-are-still-the-number"),
        pytest.param(b"0" * 5000, 0, id="all-zeros"),
    ],
)
def test_retry_range(value: bytes, expected: int | None) -> None:
    parser = SSEParser()
    parser.feed(b"retry: " + value + b"\n")
    assert parser.retry == expected


def test_last_event_id_tracked_without_dispatch() -> None:
    parser = SSEParser()
    parser.feed(b"id: abc\n\n")
    assert parser.last_event_id == "abc"


def test_bom_split_across_chunks() -> None:
    assert parse_chunks([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [("message", "x", None)]


def test_partial_bom_prefix_is_data() -> None:
    # \xef\xbb followed by something else is not a BOM: the bytes stay (as U+FFFD).
    assert parse_chunks([b"\xef\xbb", b"data: x\n\n"]) == []
    assert parse_chunks([b"\xef", b"\n", b"data: x\n\n"]) == [("message", "x", None)]


def test_close_reports_discarded_partial_event() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\n\ndata: b")
    assert parser.close() == []
    assert parser.partial_discarded
    clean = SSEParser()
    clean.feed(b"data: a\n\n")
    clean.close()
    assert not clean.partial_discarded


def test_feed_after_close_is_a_programming_error() -> None:
    parser = SSEParser()
    parser.close()
    with pytest.raises(RuntimeError):
        parser.feed(b"data: x\n\n")


def test_event_size_cap_on_endless_line_names_offset() -> None:
    parser = SSEParser(max_event_bytes=100)
    parser.feed(b"data: ok\n\n")
    parser.feed(b"data: " + b"x" * 50)
    with pytest.raises(ProtocolError, match=r"exceeds 100 bytes at byte offset 136") as info:
        parser.feed(b"x" * 70)
    assert info.value.offset == 136
    # A parser that has raised stays dead.
    with pytest.raises(ProtocolError):
        parser.feed(b"\n\n")


def test_event_size_cap_on_many_data_lines() -> None:
    parser = SSEParser(max_event_bytes=1000)
    for _ in range(58):  # 580 data bytes: still under the cap
        parser.feed(b"data: 0123456789\n")
    with pytest.raises(ProtocolError, match="exceeds 1000 bytes"):
        parser.feed(b"data: 0123456789\n" * 50)


def test_a_flood_of_empty_data_lines_meets_the_cap() -> None:
    """Each data line counts as sent (value, `data: `, line end): empty ones too."""
    parser = SSEParser(max_event_bytes=100)
    assert parser.feed(b"data:\n" * 14) == []  # 98 bytes as counted
    with pytest.raises(ProtocolError, match="exceeds 100 bytes"):
        parser.feed(b"data:\n")


def test_a_failed_parser_frees_what_it_buffered() -> None:
    parser = SSEParser(max_event_bytes=1000)
    parser.feed(b"data: " + b"x" * 900 + b"\ndata: ")
    with pytest.raises(ProtocolError):
        parser.feed(b"y" * 500)
    assert (parser._data, parser._pending) == ([], [])


def test_event_size_cap_resets_per_event() -> None:
    parser = SSEParser(max_event_bytes=100)
    for _ in range(100):
        assert len(parser.feed(b"data: " + b"y" * 40 + b"\n")) == 0
        assert len(parser.feed(b"data: " + b"y" * 40 + b"\n\n")) == 1


def test_long_line_in_many_chunks_is_joined() -> None:
    parser = SSEParser()
    for _ in range(1000):
        assert parser.feed(b"y" * 10) == []
    (msg,) = parser.feed(b": tail\n") + parser.feed(b"data: z\n\n")
    assert msg.data == "z"  # the long line was an (ignored) unknown field


def test_message_data_and_raw() -> None:
    (msg,) = SSEParser().feed(b"data: h\xc3\xa9\n\n")
    assert msg.raw == b"h\xc3\xa9"
    assert msg.data == "h\u00e9"


ATOMS = st.sampled_from(
    [
        b"data:",
        b"data: ",
        b"event:",
        b"event: x",
        b"id:",
        b"id: 1",
        b"retry: 10",
        b"retry:x",
        b":",
        b" ",
        b"a",
        b"\xc3\xa9",
        b"\xff",
        b"\r",
        b"\n",
        b"\r\n",
        b"\xef\xbb\xbf",
        b"\0",
        b"[DONE]",
        b"{}",
        b"error: e",
        b"error:",
    ]
)
STREAMS = st.lists(ATOMS, max_size=40).map(b"".join)


@settings(derandomize=True, max_examples=400)
@given(raw=STREAMS, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_property_any_chunking_equals_whole(raw: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(raw)) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert parse_chunks(chunks) == parse_whole(raw)


@settings(derandomize=True, max_examples=400)
@given(raw=STREAMS)
def test_property_matches_reference(raw: bytes) -> None:
    assert parse_whole(raw) == reference_parse(raw)


LONG_VALUES = st.sampled_from([b"9" * 5000, b"0" * 4400 + b"7", b"1" * 19, b"1" * 20]) | st.binary(
    max_size=20
)

LINES = st.builds(
    lambda name, sep, value, end: name + sep + value + end,
    st.sampled_from([b"retry", b"data", b"id", b"event", b""]),
    st.sampled_from([b":", b": ", b""]),
    LONG_VALUES,
    st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n", b""]),
)


@settings(derandomize=True, max_examples=100)
@given(raw=st.lists(LINES, max_size=8).map(b"".join), step=st.integers(1, 4096))
def test_property_long_field_values_raise_only_protocol_error(raw: bytes, step: int) -> None:
    # Values past CPython's int-string limit (4300 digits) must not escape as ValueError.
    parser = SSEParser()
    try:
        for i in range(0, len(raw), step):
            parser.feed(raw[i : i + step])
        parser.close()
    except ProtocolError:
        pass


@settings(derandomize=True, max_examples=300)
@given(raw=st.binary(max_size=300), size=st.integers(min_value=1, max_value=64))
def test_property_arbitrary_bytes_raise_only_protocol_error(raw: bytes, size: int) -> None:
    parser = SSEParser(max_event_bytes=size)
    try:
        for i in range(0, len(raw), 7):
            parser.feed(raw[i : i + 7])
        parser.close()
    except ProtocolError:
        pass


def test_the_flat_form_carries_an_error_line_too() -> None:
    parser = SSEParser(factory=None)
    assert parser.feed(b'data: a\n\nerror: {"m":1}\ndata: [DONE]\n\n') == [
        b"a",
        "message",
        None,
        b'{"m":1}',
        "error",
        None,
        b"[DONE]",
        "message",
        None,
    ]


def test_flat_parser_is_the_factory_none_form() -> None:
    raw = b'event: e\nid: 7\ndata: a\n\nerror: {"m":1}\n'
    assert FlatSSEParser(100).feed(raw) == SSEParser(100, factory=None).feed(raw)
    assert FlatSSEParser(100).feed(raw) == [b"a", "e", "7", b'{"m":1}', "error", "7"]


def test_a_message_pickles_and_copies() -> None:
    message = SSEMessage(b"a", "e", "1")
    assert pickle.loads(pickle.dumps(message)) == message == copy.copy(message)  # noqa: S301
