"""`merge`: chat deltas merged as openai-python's `accumulate_delta` merges them, and where
(docs/sdk-parity.md) the engine deliberately does not repeat its slips."""

from __future__ import annotations

from typing import Any

import pytest
from openai.lib.streaming._deltas import accumulate_delta

from engine.merge import Pieces, materialized, merge


def merged(*deltas: dict[str, Any]) -> Any:
    acc: dict[str, Any] = {}
    for delta in deltas:
        merge(acc, delta)
    return materialized(acc)


def sdk(*deltas: dict[str, Any]) -> Any:
    acc: dict[object, object] = {}
    for delta in deltas:
        accumulate_delta(acc, dict(delta))
    return acc


SAME_AS_THE_SDK = [
    pytest.param([{"content": "He"}, {"content": "llo"}], id="strings-join"),
    pytest.param([{"content": None}, {"content": "Hi"}], id="null-then-text"),
    pytest.param([{"content": "Hi"}, {"content": None}], id="null-changes-nothing"),
    pytest.param(
        [
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]},
            {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
            {"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]},
        ],
        id="indexed-calls",
    ),
    pytest.param(
        [{"audio": {"id": "au", "data": "AA"}}, {"audio": {"data": "BB", "transcript": "x"}}],
        id="objects-merge",
    ),
    pytest.param([{"tags": ["a"]}, {"tags": ["b", 3]}], id="scalar-lists-extend"),
    pytest.param([{"content": "x"}, {"content": {"odd": 1}}], id="mismatched-types-keep"),
    pytest.param([{"x": {"a": 1}}, {"x": "s"}, {"x": [1]}], id="object-keeps-its-type"),
    pytest.param([{"type": "a"}, {"type": "b"}], id="type-is-replaced"),
]


@pytest.mark.parametrize("deltas", SAME_AS_THE_SDK)
def test_merge_is_the_sdks(deltas: list[dict[str, Any]]) -> None:
    assert merged(*deltas) == sdk(*deltas)


@pytest.mark.parametrize(
    ("deltas", "ours", "theirs"),
    [
        pytest.param(
            [{"role": "assistant"}, {"role": "assistant"}],
            {"role": "assistant"},
            {"role": "assistantassistant"},
            id="a-role-sent-again-is-kept-once",
        ),
        pytest.param(
            [{"audio": {"expires_at": 9}}, {"audio": {"expires_at": 9}}],
            {"audio": {"expires_at": 9}},
            {"audio": {"expires_at": 18}},
            id="a-number-sent-again-is-the-latest",
        ),
        pytest.param(
            [{"type": "a"}, {"type": None}],
            {"type": "a"},
            {"type": None},
            id="a-null-type-keeps-the-last",
        ),
    ],
)
def test_where_the_sdk_slips_the_engine_does_not(
    deltas: list[dict[str, Any]], ours: Any, theirs: Any
) -> None:
    assert merged(*deltas) == ours
    assert sdk(*deltas) == theirs


def test_entries_without_an_index() -> None:
    """The SDK raises on the second list; the engine appends, and in `tool_calls` a new
    `id` is a new call while a fragment without one continues the last."""
    calls = [
        {"tool_calls": [{"id": "a", "function": {"name": "x", "arguments": "{"}}]},
        {"tool_calls": [{"function": {"arguments": "}"}}]},
        {"tool_calls": [{"id": "b", "function": {"name": "y", "arguments": "{}"}}]},
        {"tool_calls": [{"id": "b", "function": {"arguments": ""}}]},
    ]
    assert merged(*calls)["tool_calls"] == [
        {"id": "a", "function": {"name": "x", "arguments": "{}"}},
        {"id": "b", "function": {"name": "y", "arguments": "{}"}},
    ]
    with pytest.raises((RuntimeError, TypeError)):
        sdk(*calls)
    notes = [{"annotations": [{"url": "a"}]}, {"annotations": [{"url": "b"}, "odd"]}]
    assert merged(*notes) == {"annotations": [{"url": "a"}, {"url": "b"}, "odd"]}


def test_merge_never_shares_the_deltas_objects_and_counts_text() -> None:
    first = {"audio": {"data": "AA"}, "tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}
    acc: dict[str, Any] = {}
    assert merge(acc, first) == 3
    assert merge(acc, {"audio": {"data": "BB"}, "role": "assistant"}) == 2 + len("assistant")
    assert merge(acc, {"role": "assistant"}) == 0
    assert first == {
        "audio": {"data": "AA"},
        "tool_calls": [{"index": 0, "function": {"arguments": "{"}}],
    }
    assert isinstance(acc["audio"]["data"], Pieces)
    assert materialized(acc)["audio"] == {"data": "AABB"}


def test_pieces_fold_and_say_when_empty() -> None:
    pieces = Pieces()
    assert pieces.joined() is None
    for _ in range(Pieces.FOLD + 1):
        pieces.append("ab")
    assert (len(pieces.folded), len(pieces.pieces)) == (1, 1)
    assert pieces.joined() == "ab" * (Pieces.FOLD + 1)
